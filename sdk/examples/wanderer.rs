//! A small bot: it gets a seat from the allocator, wanders, greets whoever it meets, and leaves
//! cleanly on Ctrl-C. Reconnection is the SDK's business.
//!
//! ```sh
//! cargo run --release -p arena-allocator -- serve &
//! cargo run --release -p arena-gameserver -- serve --allocator-url http://127.0.0.1:7100 &
//! cargo run -p arena-sdk --example wanderer -- http://127.0.0.1:7100 wanderer-1
//! ```

use std::time::Duration;

use arena_sdk::bot::{Bot, BotEvent, BotOptions};
use arena_sdk::protocol::Event;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let allocator = args.next().unwrap_or_else(|| "http://127.0.0.1:7100".into());
    let name = args.next().unwrap_or_else(|| "wanderer".into());
    let key = std::env::var("ARENA_API_KEY").unwrap_or_else(|_| "arena-dev-key".into());

    let mut bot = Bot::connect(&allocator, BotOptions::new(&name, key)).await?;
    let mut wander = tokio::time::interval(Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = wander.tick() => {
                // Somewhere new, within 200 units of where it stands.
                let step = bot.with_world(|w| (w.tick() % 400) as f32 - 200.0).unwrap_or(0.0);
                let _ = bot.move_by(step, -step / 2.0).await;
            }
            event = bot.next_event() => match event {
                Some(BotEvent::Joined(seat)) => println!("seated in {} on {} as bot {}", seat.world_id, seat.server_id, seat.bot),
                Some(BotEvent::Update(u)) => {
                    for e in &u.events {
                        if let Event::Joined { name: other, .. } = e
                            && *other != name
                        {
                            let _ = bot.say(format!("hello {other}!")).await;
                        }
                        if let Event::Say { bot: who, text } = e {
                            println!("bot {who} says {text:?}");
                        }
                    }
                }
                Some(BotEvent::Reconnecting { attempt, reason }) => println!("reconnecting (attempt {attempt}): {reason}"),
                Some(BotEvent::Stopped { reason }) => {
                    println!("stopped: {reason}");
                    return Ok(());
                }
                Some(_) => {}
                None => return Ok(()),
            },
        }
    }
    bot.shutdown().await;
    Ok(())
}
