//! The crate's files form no import cycle: each module depends only on modules it does not
//! depend back on, so the crate reads — and changes — from the inside out.

#[test]
fn the_modules_form_no_cycle() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = arena_testkit::layering::graph(&src);
    assert!(graph.len() > 5, "the graph was read: {graph:?}");
    let cycles = arena_testkit::layering::cycles(&graph);
    assert!(cycles.is_empty(), "import cycles: {cycles:?}\ngraph: {graph:#?}");
}
