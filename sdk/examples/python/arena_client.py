#!/usr/bin/env python3
"""A minimal Arena bot in Python, written from docs/protocol.md (subprotocol arena.v1.json).

It joins a world with a ticket, keeps a mirror of the world, walks, chats, and waits until it has
seen another bot (and, optionally, that bot's chat line). Exit status 0 means every step worked;
the last line printed is a JSON summary.

    pip install websockets
    python3 arena_client.py --url ws://127.0.0.1:7000/ws --ticket "$(arena-gameserver ticket --world w --bot py)" \
        --world w --say "hello from python" --expect-bot rusty
"""

import argparse
import asyncio
import json
import sys

from websockets.asyncio.client import connect


class Mirror:
    """The world as the server described it (section 6 of the protocol)."""

    def __init__(self, welcome):
        self.me = welcome["bot"]
        self.reset(welcome["tick"], welcome["snapshot"])

    def reset(self, tick, snapshot):
        self.tick = tick
        self.bots = {b["id"]: dict(b) for b in snapshot["bots"]}

    def apply(self, update):
        """Apply an update; False means a gap: the caller must send resync."""
        if update["tick"] != self.tick + 1:
            return False
        for bot_id in update["removed"]:
            self.bots.pop(bot_id, None)
        for delta in update["changed"]:
            bot = self.bots.get(delta["id"])
            if bot is not None:
                bot.update(delta)
            elif all(k in delta for k in ("name", "x", "y", "tx", "ty", "status", "score")):
                self.bots[delta["id"]] = dict(delta)
            else:
                return False
        self.tick = update["tick"]
        return True

    def by_name(self, name):
        return next((b for b in self.bots.values() if b["name"] == name), None)


class Bot:
    def __init__(self, ws):
        self.ws = ws
        self.seq = 0
        self.mirror = None
        self.ack_seq = 0
        self.awaiting_resync = False
        self.heard = []  # (bot name, text)
        self.pongs = []

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def join(self, ticket, world):
        await self.send({"type": "join", "ticket": ticket, "world": world})
        while self.mirror is None:
            await self.receive()

    async def input(self, **command):
        self.seq += 1
        await self.send({"type": "input", "seq": self.seq, **command})
        return self.seq

    async def receive(self):
        msg = json.loads(await self.ws.recv())
        kind = msg["type"]
        if kind == "welcome":
            self.mirror = Mirror(msg)
            self.seq = max(self.seq, msg["ack_seq"])
        elif kind == "update" and self.mirror is not None and not self.awaiting_resync:
            names = {i: b["name"] for i, b in self.mirror.bots.items()}
            if self.mirror.apply(msg):
                self.ack_seq = msg["ack_seq"]
                for ev in msg["events"]:
                    if ev["kind"] == "say":
                        who = self.mirror.bots.get(ev["bot"], {}).get("name") or names.get(ev["bot"])
                        self.heard.append((who, ev["text"]))
            else:
                self.awaiting_resync = True
                await self.send({"type": "resync"})
        elif kind == "snapshot" and self.mirror is not None:
            self.mirror.reset(msg["tick"], msg["snapshot"])
            self.ack_seq = msg["ack_seq"]
            self.awaiting_resync = False
        elif kind == "pong":
            self.pongs.append(msg["nonce"])
        elif kind == "error":
            raise RuntimeError(f"server error {msg['code']}: {msg['message']}")
        return msg

    async def until(self, condition, what, timeout=10.0):
        async def loop():
            while not condition():
                await self.receive()

        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"timed out waiting for {what}") from None


async def main(args):
    async with connect(args.url, subprotocols=["arena.v1.json"]) as ws:
        if ws.subprotocol != "arena.v1.json":
            raise RuntimeError(f"server chose subprotocol {ws.subprotocol!r}")
        bot = Bot(ws)
        await bot.join(args.ticket, args.world)
        me = bot.mirror.bots[bot.mirror.me]

        # Walk 50 units (toward the middle) and wait until the server has applied it.
        tx = me["x"] + (50.0 if me["x"] < 500 else -50.0)
        seq = await bot.input(move={"to": [tx, me["y"]]})
        await bot.until(lambda: bot.ack_seq >= seq, "the move to be acknowledged")
        await bot.until(lambda: bot.mirror.bots[bot.mirror.me]["x"] == tx, "arriving")

        seq = await bot.input(say=args.say)
        await bot.until(lambda: bot.ack_seq >= seq, "the chat to be acknowledged")
        await bot.until(lambda: (me["name"], args.say) in bot.heard, "hearing our own chat")

        other = None
        if args.expect_bot:
            await bot.until(lambda: bot.mirror.by_name(args.expect_bot) is not None, f"seeing {args.expect_bot}")
            other = bot.mirror.by_name(args.expect_bot)
        if args.expect_chat:
            await bot.until(lambda: (args.expect_bot, args.expect_chat) in bot.heard, "the other bot's chat")

        await bot.send({"type": "ping", "nonce": 7})
        await bot.until(lambda: 7 in bot.pongs, "the pong")

        print(json.dumps({
            "me": bot.mirror.me,
            "name": me["name"],
            "tick": bot.mirror.tick,
            "position": [bot.mirror.bots[bot.mirror.me]["x"], bot.mirror.bots[bot.mirror.me]["y"]],
            "bots": sorted(b["name"] for b in bot.mirror.bots.values()),
            "saw": other["name"] if other else None,
            "heard": [list(h) for h in bot.heard],
        }))
    # Leaving the `async with` closes with 1000: the seat is freed at once.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ticket", required=True)
    parser.add_argument("--world", required=True)
    parser.add_argument("--say", default="hello from python")
    parser.add_argument("--expect-bot", help="wait until a bot with this name is in the world")
    parser.add_argument("--expect-chat", help="wait until --expect-bot says this")
    try:
        asyncio.run(main(parser.parse_args()))
    except Exception as e:  # noqa: BLE001 - report any failure as a non-zero exit
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
