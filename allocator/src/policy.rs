//! Where a bot plays: a pure function of the request and the registry index.
//!
//! - With a `world_id`: the server where that world is live, or — if it is not live anywhere
//!   (never placed, or its server stopped reporting) — a ready server with room for one more
//!   world in the best region.
//! - Without: in each region by preference, first a free seat in an existing world, then a new
//!   world. `packed` takes the fullest world with a free seat on the fullest server, and places
//!   new worlds on the fullest server with world room, so as few servers as possible are busy;
//!   `distributed` gives the bot to the least full server (a seat in its fullest open world,
//!   or a new world there), spreading load. A region without room spills over to the next.
//!
//! A server's room is the lesser of its free seats and what its tick budget still allows (it
//! reports that); a server past its budget takes no new bots. Liveness is judged on the
//! registry's clock.

use std::collections::HashSet;

use arena_sdk::allocator_api::Scheduling;

use crate::snapshot::{Index, Liveness, ServerEntry};

/// What is asked, already validated.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    /// Regions in order of preference; empty for any.
    pub regions: &'a [String],
    pub world: Option<&'a str>,
    pub scheduling: Scheduling,
}

/// Candidates a failed reservation ruled out during this request.
#[derive(Debug, Clone, Default)]
pub struct Avoid {
    pub worlds: HashSet<String>,
    pub servers: HashSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Reserve a seat in a live world.
    Seat {
        world: String,
        server: String,
        fence: u64,
    },
    /// Place the world (the requested one, or a new one) on a server and reserve a seat in it.
    Place {
        world: Option<String>,
        server: String,
    },
    Unavailable(Unavailable),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No region in the preference has room.
    NoCapacity,
    /// The requested world is live and full.
    WorldFull,
    /// The requested world is live on a server that is draining.
    WorldMoving,
    /// The requested world is live on a server past its tick budget.
    WorldBusy,
}

fn usable(s: &ServerEntry, l: Liveness, avoid: &Avoid) -> bool {
    s.takes_new_bots(l) && !avoid.servers.contains(&s.view.id)
}

/// Regions to try, in order: the requested ones; with no preference, every region — the
/// fullest with room first when packing, the emptiest first when distributing.
pub fn region_order(index: &Index, want: &[String], scheduling: Scheduling, l: Liveness) -> Vec<String> {
    if !want.is_empty() {
        return want.to_vec();
    }
    let mut all: Vec<(String, u64)> = index
        .regions()
        .map(|r| {
            let free: u64 = index.servers_in(r).filter(|s| s.takes_new_bots(l)).map(ServerEntry::free_seats).sum();
            (r.to_owned(), free)
        })
        .filter(|(_, free)| *free > 0)
        .collect();
    match scheduling {
        Scheduling::Packed => all.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0))),
        Scheduling::Distributed => all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0))),
    }
    all.into_iter().map(|(r, _)| r).collect()
}

/// Servers of a region that may take seats, in visiting order for `scheduling`.
fn server_order<'a>(
    index: &'a Index,
    region: &str,
    scheduling: Scheduling,
    l: Liveness,
    avoid: &Avoid,
) -> Vec<&'a ServerEntry> {
    let mut servers: Vec<&ServerEntry> = index.servers_in(region).filter(|s| usable(s, l, avoid)).collect();
    match scheduling {
        Scheduling::Packed => servers.sort_by(|a, b| b.bots.cmp(&a.bots).then_with(|| a.view.id.cmp(&b.view.id))),
        Scheduling::Distributed => {
            servers.sort_by(|a, b| a.fill().total_cmp(&b.fill()).then_with(|| a.view.id.cmp(&b.view.id)))
        }
    }
    servers
}

fn open_world<'a>(s: &'a ServerEntry, avoid: &Avoid) -> Option<&'a str> {
    // Usually the first; skip worlds a conflict ruled out in this request.
    let (w, _) = s.fullest_open_world()?;
    if !avoid.worlds.contains(w) {
        return Some(w);
    }
    None
}

/// Decide for `want`. `holds` says the bot holds a seat in the requested world already: it
/// needs no free seat there, and no tick budget.
pub fn choose(index: &Index, want: Want<'_>, l: Liveness, avoid: &Avoid) -> Decision {
    choose_for(index, want, l, avoid, false)
}

/// [`choose`], for a bot that holds a seat in `want.world` when `holds`.
pub fn choose_for(index: &Index, want: Want<'_>, l: Liveness, avoid: &Avoid, holds: bool) -> Decision {
    let regions = region_order(index, want.regions, want.scheduling, l);
    if let Some(world) = want.world {
        if let Some(w) = index.world(world)
            && let Some(s) = index.server(&w.server)
            && s.view.alive(l)
        {
            if !s.view.ready(l) || avoid.servers.contains(&w.server) {
                return Decision::Unavailable(Unavailable::WorldMoving);
            }
            if !holds && (w.used >= s.view.world_capacity || avoid.worlds.contains(world)) {
                return Decision::Unavailable(Unavailable::WorldFull);
            }
            if !holds && s.room_left == 0 {
                return Decision::Unavailable(Unavailable::WorldBusy);
            }
            return Decision::Seat { world: world.to_owned(), server: w.server.clone(), fence: w.fence };
        }
        // Not live anywhere: place it (regions in preference; with none, any that has room).
        let everywhere: Vec<String> = index.regions().map(str::to_owned).collect();
        let regions = if regions.is_empty() && want.regions.is_empty() { everywhere } else { regions };
        for region in &regions {
            if let Some(s) =
                server_order(index, region, want.scheduling, l, avoid).into_iter().find(|s| s.has_world_room())
            {
                return Decision::Place { world: Some(world.to_owned()), server: s.view.id.clone() };
            }
        }
        return Decision::Unavailable(Unavailable::NoCapacity);
    }
    for region in &regions {
        let servers = server_order(index, region, want.scheduling, l, avoid);
        let seat = |s: &ServerEntry| {
            open_world(s, avoid).map(|w| Decision::Seat {
                world: w.to_owned(),
                server: s.view.id.clone(),
                fence: index.world(w).map_or(0, |e| e.fence),
            })
        };
        let place =
            |s: &ServerEntry| s.has_world_room().then(|| Decision::Place { world: None, server: s.view.id.clone() });
        let found = match want.scheduling {
            // Any free seat in the region before a new world: worlds fill, then servers.
            Scheduling::Packed => {
                servers.iter().find_map(|s| seat(s)).or_else(|| servers.iter().find_map(|s| place(s)))
            }
            // The least loaded server takes the bot, in a world of its own if need be.
            Scheduling::Distributed => servers.iter().find_map(|s| seat(s).or_else(|| place(s))),
        };
        if let Some(d) = found {
            return d;
        }
    }
    Decision::Unavailable(Unavailable::NoCapacity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ServerView, Snapshot, WorldView};
    use arena_sdk::allocator_api::{ServerLoad, ServerState};

    const NOW: Liveness = Liveness { now_ms: 10_000, resume_ms: 0, timeout_ms: 5_000 };

    fn server(id: &str, region: &str, max_worlds: u32) -> ServerView {
        ServerView {
            id: id.into(),
            region: region.into(),
            ws: format!("ws://{id}"),
            quic: None,
            quic_cert_sha256: None,
            state: ServerState::Ready,
            max_worlds,
            world_capacity: 30,
            last_seen_ms: 9_000,
            load: None,
            version: None,
        }
    }

    fn world(id: &str, server: &str, used: u32) -> WorldView {
        WorldView { id: id.into(), server: server.into(), fence: 7, used }
    }

    fn any() -> Want<'static> {
        Want { regions: &[], world: None, scheduling: Scheduling::Packed }
    }

    fn seat(world: &str, server: &str) -> Decision {
        Decision::Seat { world: world.into(), server: server.into(), fence: 7 }
    }

    fn place(server: &str) -> Decision {
        Decision::Place { world: None, server: server.into() }
    }

    /// (servers, worlds, regions wanted, scheduling, expected decision)
    #[test]
    fn packed_and_distributed_table() {
        let us = vec!["us".to_string()];
        let us_eu = vec!["us".to_string(), "eu".to_string()];
        type Case<'a> = (&'a str, Vec<ServerView>, Vec<WorldView>, &'a [String], Scheduling, Decision);
        let cases: Vec<Case> = vec![
            (
                "packed: fullest world with a free seat on the fullest server",
                vec![server("a", "us", 3), server("b", "us", 3)],
                vec![world("a1", "a", 10), world("a2", "a", 29), world("a3", "a", 30), world("b1", "b", 5)],
                &us,
                Scheduling::Packed,
                seat("a2", "a"),
            ),
            (
                "packed: the fuller server wins even when another server's world is fuller",
                vec![server("a", "us", 3), server("b", "us", 3)],
                vec![world("a1", "a", 20), world("a2", "a", 20), world("b1", "b", 25)],
                &us,
                Scheduling::Packed,
                seat("a1", "a"),
            ),
            (
                "packed: seats in existing worlds before a new world",
                vec![server("a", "us", 3), server("b", "us", 3)],
                vec![world("a1", "a", 30), world("b1", "b", 1)],
                &us,
                Scheduling::Packed,
                seat("b1", "b"),
            ),
            (
                "packed: new world on the fullest server with world room",
                vec![server("a", "us", 1), server("b", "us", 2), server("c", "us", 2)],
                vec![world("a1", "a", 30), world("b1", "b", 30), world("c1", "c", 30)],
                &us,
                Scheduling::Packed,
                place("b"),
            ),
            (
                "distributed: the least utilised server",
                vec![server("a", "us", 3), server("b", "us", 3)],
                vec![world("a1", "a", 29), world("b1", "b", 5)],
                &us,
                Scheduling::Distributed,
                seat("b1", "b"),
            ),
            (
                "distributed: a new world on the emptiest server",
                vec![server("a", "us", 3), server("b", "us", 3)],
                vec![world("a1", "a", 10)],
                &us,
                Scheduling::Distributed,
                place("b"),
            ),
            (
                "a full region spills over to the next",
                vec![server("a", "us", 1), server("e", "eu", 1)],
                vec![world("a1", "a", 30)],
                &us_eu,
                Scheduling::Packed,
                place("e"),
            ),
            (
                "no room anywhere",
                vec![server("a", "us", 1)],
                vec![world("a1", "a", 30)],
                &us_eu,
                Scheduling::Packed,
                Decision::Unavailable(Unavailable::NoCapacity),
            ),
            (
                "stale and draining servers get no seats",
                vec![
                    ServerView { last_seen_ms: 4_999, ..server("old", "us", 3) },
                    ServerView { state: ServerState::Draining, ..server("drain", "us", 3) },
                    server("ok", "us", 3),
                ],
                vec![world("o1", "old", 1), world("d1", "drain", 1), world("k1", "ok", 30)],
                &us,
                Scheduling::Packed,
                place("ok"),
            ),
        ];
        for (name, servers, worlds, regions, scheduling, expected) in cases {
            let ix = Index::build(&Snapshot { servers, worlds, ..Snapshot::default() });
            let got = choose(&ix, Want { regions, world: None, scheduling }, NOW, &Avoid::default());
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn requested_world_goes_where_it_lives_or_is_placed() {
        let snap = Snapshot {
            servers: vec![
                server("a", "us", 2),
                ServerView { last_seen_ms: 1, ..server("dead", "us", 2) },
                ServerView { state: ServerState::Draining, ..server("drain", "us", 2) },
                server("e", "eu", 2),
            ],
            worlds: vec![
                world("mine", "a", 3),
                world("full", "a", 30),
                world("lost", "dead", 4),
                world("moving", "drain", 2),
            ],
            ..Snapshot::default()
        };
        let ix = Index::build(&snap);
        let want = |w: &'static str, regions: &'static [String]| Want {
            regions,
            world: Some(w),
            scheduling: Scheduling::Packed,
        };
        let none: &'static [String] = &[];
        assert_eq!(choose(&ix, want("mine", none), NOW, &Avoid::default()), seat("mine", "a"));
        assert_eq!(
            choose(&ix, want("full", none), NOW, &Avoid::default()),
            Decision::Unavailable(Unavailable::WorldFull)
        );
        assert_eq!(
            choose(&ix, want("moving", none), NOW, &Avoid::default()),
            Decision::Unavailable(Unavailable::WorldMoving)
        );
        let eu: &'static [String] = Box::leak(Box::new(vec!["eu".to_string()]));
        assert_eq!(
            choose(&ix, want("lost", eu), NOW, &Avoid::default()),
            Decision::Place { world: Some("lost".into()), server: "e".into() },
            "a world whose server died is placed again"
        );
        assert_eq!(
            choose(&ix, want("brand-new", eu), NOW, &Avoid::default()),
            Decision::Place { world: Some("brand-new".into()), server: "e".into() }
        );
        // A bot that holds a seat in a full world gets it back.
        assert_eq!(choose_for(&ix, want("full", none), NOW, &Avoid::default(), true), seat("full", "a"));
    }

    #[test]
    fn a_server_past_its_tick_budget_takes_no_new_bots() {
        let busy = ServerView { load: Some(ServerLoad { tick: 1.3, bots: 7000, room: 0 }), ..server("a", "us", 300) };
        let snap = Snapshot {
            servers: vec![busy, server("b", "us", 300)],
            worlds: vec![world("a1", "a", 20), world("b1", "b", 2)],
            ..Snapshot::default()
        };
        let ix = Index::build(&snap);
        assert_eq!(choose(&ix, any(), NOW, &Avoid::default()), seat("b1", "b"), "steered away from a");
        let want = Want { regions: &[], world: Some("a1"), scheduling: Scheduling::Packed };
        assert_eq!(choose(&ix, want, NOW, &Avoid::default()), Decision::Unavailable(Unavailable::WorldBusy));
        assert_eq!(choose_for(&ix, want, NOW, &Avoid::default(), true), seat("a1", "a"), "held seats still go there");
    }

    #[test]
    fn conflicts_steer_the_retry() {
        let snap = Snapshot {
            servers: vec![server("a", "us", 2), server("b", "us", 2)],
            worlds: vec![world("a1", "a", 20), world("b1", "b", 10)],
            ..Snapshot::default()
        };
        let ix = Index::build(&snap);
        let mut avoid = Avoid::default();
        assert_eq!(choose(&ix, any(), NOW, &avoid), seat("a1", "a"));
        avoid.worlds.insert("a1".into());
        // a1 is ruled out; a has world room, but b has an open world, and seats come first.
        assert_eq!(choose(&ix, any(), NOW, &avoid), seat("b1", "b"));
        avoid.servers.insert("b".into());
        assert_eq!(choose(&ix, any(), NOW, &avoid), place("a"));
    }

    #[test]
    fn any_region_packs_the_fullest_or_spreads_to_the_emptiest() {
        let snap = Snapshot {
            servers: vec![server("a", "us", 1), server("e", "eu", 4), server("x", "ap", 1)],
            worlds: vec![world("a1", "a", 29), world("x1", "x", 30)],
            ..Snapshot::default()
        };
        let ix = Index::build(&snap);
        assert_eq!(region_order(&ix, &[], Scheduling::Packed, NOW), vec!["us", "eu"], "full regions are skipped");
        assert_eq!(region_order(&ix, &[], Scheduling::Distributed, NOW), vec!["eu", "us"]);
        assert_eq!(choose(&ix, any(), NOW, &Avoid::default()), seat("a1", "a"));
        let spread = Want { scheduling: Scheduling::Distributed, ..any() };
        assert_eq!(choose(&ix, spread, NOW, &Avoid::default()), place("e"));
    }
}
