"""The worker over the real broker: queries priced, clicks charged once, bad input dead-lettered with its reason.

Uses the session ``worker`` (small world catalog) on the session broker (noida unless configured).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import numpy as np
import orjson
import pytest

from bidder.events import Click, Purchase, Query, encode, to_json
from bidder.query.features import QueryContext
from bidder.settings import Settings
from streams.producer import EventProducer
from tests.kafka_helpers import read_until

pytestmark = pytest.mark.broker


def make_query(world: Any, qid: str, *, n: int = 60, seed: int = 0) -> Query:
    rng = np.random.default_rng(seed)
    ids = rng.choice(world.listing_ids, size=n, replace=False)
    return Query(query_id=qid, ts=time.time(), user_id=42, context=QueryContext("mobile", "search", 12, 1),
                 text="mug", listing_ids=ids, relevance=np.round(rng.uniform(0.5, 1.0, n), 3))


async def send_raw(settings: Settings, bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    async with EventProducer(settings, bootstrap=bootstrap) as p:
        for topic, key, value in records:
            await p.send_raw(topic, key, value)


def outcome_of(settings: Settings, bootstrap: str, qid: str) -> dict[str, Any]:
    recs = asyncio.run(read_until(settings, bootstrap, ["auctions"],
                                  lambda rs: any(v and v.get("query_id") == qid for _, v, _ in rs)))
    return next(v for _, v, _ in recs if v and v.get("query_id") == qid)


def test_query_priced_and_click_charged_once(worker: Any, bootstrap: str, settings: Settings,
                                             small_world: Any) -> None:
    tag = f"flow-{time.time_ns()}"
    q = make_query(small_world, f"{tag}-q")
    asyncio.run(send_raw(settings, bootstrap, [("queries", q.query_id.encode(), encode(q))]))
    out = outcome_of(settings, bootstrap, q.query_id)
    winners = out["winners"]
    assert 0 < len(winners) <= 24
    assert [w["slot"] for w in winners] == list(range(len(winners)))
    assert all(settings.reserve_price - 1e-9 <= w["price"] <= w["bid"] + 1e-9 for w in winners)
    assert all(len(w["features"]) == 18 for w in winners)
    assert set(out["model_versions"]) == {"ctr", "cvr"}
    assert {"gather", "score", "bid", "auction", "total", "queue"} <= set(out["timings_ms"])
    top = winners[0]
    assert all(isinstance(w["click_token"], str) and w["click_token"] for w in winners)
    click = Click.of_winner(out, top, click_id=f"{tag}-c", user_id=42, ts=time.time())
    raw = encode(click)
    key = str(click.shop_id).encode()
    # the same click three times: one charge, two duplicates
    asyncio.run(send_raw(settings, bootstrap, [("clicks", key, raw)] * 3))
    recs = asyncio.run(read_until(settings, bootstrap, ["billing"], lambda rs: sum(
        1 for _, v, _ in rs if v and v.get("click_id") == click.click_id) >= 3))
    lines = [v for _, v, _ in recs if v and v.get("click_id") == click.click_id]
    assert sorted(v["status"] for v in lines) == ["charged", "duplicate", "duplicate"]
    charged = next(v for v in lines if v["status"] == "charged")
    assert charged["amount"] == pytest.approx(top["price"], abs=1e-6)
    # the bill agent publishes its partition's spend per shop today: what every worker's auto-bidder paces with
    def published(rs: list[tuple[str, Any, bytes | None]]) -> float:
        return max((x for _, v, _ in rs if v and v.get("type") == "shop_spend" and v["day"] == charged["day"]
                    for s, x in zip(v["shop_ids"], v["spend"], strict=True) if s == charged["shop_id"]), default=0.0)

    spend = asyncio.run(read_until(settings, bootstrap, ["shop-spend"],
                                   lambda rs: published(rs) >= charged["spend_after"] - 1e-9))
    assert published(spend) >= charged["spend_after"] - 1e-9
    # a purchase by the same buyer on that listing is attributed to the click
    order = Purchase(order_id=f"{tag}-o", user_id=42, listing_id=top["listing_id"], shop_id=top["shop_id"],
                     ts=time.time(), amount=9.5)
    # and once more (a repeat), then an order no click explains, refused after the repeat was handled
    marker = Purchase(order_id=f"{tag}-marker", user_id=4242, listing_id=top["listing_id"], shop_id=top["shop_id"],
                      ts=time.time(), amount=1.0)
    asyncio.run(send_raw(settings, bootstrap, [("purchases", key, encode(order))] * 2
                         + [("purchases", key, encode(marker))]))
    labels = asyncio.run(read_until(settings, bootstrap, ["impressions", "labels"], lambda rs: any(
        v and v.get("order_id") == order.order_id for _, v, _ in rs) and any(
        v and v.get("type") == "impressions" and v.get("query_id") == q.query_id for _, v, _ in rs)))
    mine = [(t, v) for t, v, _ in labels if v and v.get("query_id") == q.query_id]
    # the examples on impressions, the updates on labels: nothing of one on the other
    assert [len(v["examples"]) for t, v in mine if v["type"] == "impressions"] == [len(winners)]
    assert {t for t, v in mine if v["type"] == "impressions"} == {"impressions"}
    assert {t for t, v in mine if v["type"] == "label_update"} == {"labels"}
    update = next(v for _, v in mine if v.get("order_id") == order.order_id)
    assert update["clicked"] == 1 and update["converted"] == 1 and update["click_id"] == click.click_id
    # the attributed order is recorded on the purchase's partition; the repeat converts nothing more
    recorded = asyncio.run(read_until(settings, bootstrap, ["orders", "labels", "dead-letters"], lambda rs: any(
        t == "dead-letters" and v and marker.order_id.encode() in base64.b64decode(v["value_b64"])
        for t, v, _ in rs)))
    assert [(v["click_id"], k) for t, v, k in recorded if t == "orders" and v and v.get("order_id") == order.order_id
            ] == [(click.click_id, key)]
    assert sum(1 for t, v, _ in recorded if t == "labels" and v and v.get("order_id") == order.order_id) == 1


def test_purchase_right_after_its_click_is_attributed(worker: Any, bootstrap: str, settings: Settings,
                                                      small_world: Any) -> None:
    """A buyer who buys within a second of clicking: the purchase may reach its agent before the click's
    ledger line exists. It waits for that click's decision instead of being refused as unattributed."""
    tag = f"race-{time.time_ns()}"
    queries = [make_query(small_world, f"{tag}-q{i}", seed=100 + i) for i in range(20)]
    asyncio.run(send_raw(settings, bootstrap, [("queries", q.query_id.encode(), encode(q)) for q in queries]))
    ids = {q.query_id for q in queries}
    recs = asyncio.run(read_until(settings, bootstrap, ["auctions"],
                                  lambda rs: ids <= {v.get("query_id") for _, v, _ in rs if v}))
    outcomes = {v["query_id"]: v for _, v, _ in recs if v and v.get("query_id") in ids}
    pairs: list[tuple[str, bytes | None, bytes | None]] = []
    orders = set()
    for i, q in enumerate(queries):
        top = outcomes[q.query_id]["winners"][0]
        user = 7000 + i
        click = Click.of_winner(outcomes[q.query_id], top, click_id=f"{tag}-c{i}", user_id=user, ts=time.time())
        order = Purchase(order_id=f"{tag}-o{i}", user_id=user, listing_id=top["listing_id"], shop_id=click.shop_id,
                         ts=time.time() + 0.001, amount=12.0)
        pairs += [("clicks", str(click.shop_id).encode(), encode(click)),
                  ("purchases", str(click.shop_id).encode(), encode(order))]
        orders.add(order.order_id)

    asyncio.run(send_raw(settings, bootstrap, pairs))

    def settled(rs: list[tuple[str, Any, bytes | None]]) -> bool:
        done = {v.get("order_id") for t, v, _ in rs if t == "labels" and v} | {
            orjson.loads(base64.b64decode(v["value_b64"])).get("order_id")
            for t, v, _ in rs if t == "dead-letters" and v and v.get("source_topic") == "purchases"
            and tag.encode() in base64.b64decode(v["value_b64"])}
        return orders <= done

    out = asyncio.run(read_until(settings, bootstrap, ["labels", "dead-letters"], settled, timeout_s=60.0))
    attributed = {v["order_id"] for t, v, _ in out if t == "labels" and v and v.get("order_id") in orders}
    refused = [v["reason"] for t, v, _ in out if t == "dead-letters" and v and v.get("source_topic") == "purchases"
               and tag.encode() in base64.b64decode(v["value_b64"])]
    assert refused == [] and attributed == orders


def test_click_after_the_click_window_is_refused(
        worker: Any, bootstrap: str, settings: Settings, small_world: Any) -> None:
    """The window is judged from the click's time and its auction's (signed in the token), not from when the
    click is read."""
    tag = f"late-{time.time_ns()}"
    q = make_query(small_world, f"{tag}-q", seed=3)
    q = Query(**{**{k: getattr(q, k) for k in Query.__slots__}, "ts": time.time() - settings.click_window_s - 60})
    asyncio.run(send_raw(settings, bootstrap, [("queries", q.query_id.encode(), encode(q))]))
    out = outcome_of(settings, bootstrap, q.query_id)
    top = out["winners"][0]
    late = Click.of_winner(out, top, click_id=f"{tag}-late", user_id=42, ts=time.time())
    in_time = Click.of_winner(out, top, click_id=f"{tag}-ok", user_id=42, ts=q.ts + 5.0)
    clicks = [("clicks", str(c.shop_id).encode(), encode(c)) for c in (late, in_time)]
    asyncio.run(send_raw(settings, bootstrap, clicks))
    recs = asyncio.run(read_until(settings, bootstrap, ["billing", "dead-letters"], lambda rs: (
        any(t == "billing" and v and v.get("click_id") == in_time.click_id for t, v, _ in rs)
        and any(t == "dead-letters" and v and late.click_id.encode() in base64.b64decode(v["value_b64"])
                for t, v, _ in rs))))
    refused = [v for t, v, _ in recs if t == "dead-letters" and v and late.click_id.encode() in
               base64.b64decode(v["value_b64"])]
    assert [v["reason"] for v in refused] == ["click_after_window"]
    assert not any(t == "billing" and v and v.get("click_id") == late.click_id for t, v, _ in recs)
    assert next(v for t, v, _ in recs if t == "billing" and v and v.get("click_id") == in_time.click_id)["status"] in (
        "charged", "unbilled")


def test_every_rejection_reaches_dead_letters_with_its_reason(worker: Any, bootstrap: str, settings: Settings,
                                                              small_world: Any) -> None:
    tag = f"dl-{time.time_ns()}"
    q = make_query(small_world, f"{tag}-good")
    asyncio.run(send_raw(settings, bootstrap, [("queries", q.query_id.encode(), encode(q))]))
    out = outcome_of(settings, bootstrap, q.query_id)
    winner = out["winners"][0]
    loser = next(int(i) for i in q.listing_ids if int(i) not in {w["listing_id"] for w in out["winners"]})
    now = time.time()

    def click(cid: str, **over: Any) -> bytes:
        d = to_json(Click.of_winner(out, winner, click_id=f"{tag}-{cid}", user_id=42, ts=now))
        d.update(over)
        return orjson.dumps(d)

    shop_key = str(winner["shop_id"]).encode()
    unknown = make_query(small_world, f"{tag}-unknown")
    unknown_raw = encode(Query(**{**{s: getattr(unknown, s) for s in Query.__slots__},
                                  "listing_ids": np.arange(1, 11) * 7 + 5_000_000_000,
                                  "relevance": np.full(10, 0.5)}))
    cases: list[tuple[str, bytes | None, bytes | None, str]] = [
        ("queries", b"k1", encode(q)[:40] + tag.encode(), "invalid_json"),
        ("queries", b"k2", b"[\"" + tag.encode() + b"\"]", "not_object"),
        ("queries", b"k3", b"", "empty"),
        ("queries", b"k4", b'{"tag":"' + tag.encode() + b'","v":1,"v":1}', "duplicate_key"),
        ("queries", None, encode(make_query(small_world, f"{tag}-nokey")), "wrong_key"),
        ("queries", f"{tag}-unknown".encode(), unknown_raw, "no_known_candidates"),
        ("clicks", shop_key, click("neg", listing_id=-5), "out_of_range"),
        ("clicks", shop_key, click("old", ts=now - 10 * 86_400), "stale_timestamp"),
        ("clicks", b"999999", click("key"), "wrong_key"),
        ("clicks", shop_key, click("unk", query_id=f"{tag}-never"), "bad_token"),
        ("clicks", shop_key, click("lose", listing_id=loser), "bad_token"),
        ("clicks", b"424242", click("shop", shop_id=424242), "bad_token"),
        ("clicks", shop_key, click("cheap", price=winner["price"] / 2), "bad_token"),
        ("clicks", shop_key, click("forged", token="A" * 22), "bad_token"),
        ("clicks", shop_key, click("late", ts=now + 1, shown_at=now - settings.click_window_s - 1), "bad_token"),
        ("clicks", shop_key, click("notoken", token=None), "wrong_type"),
        ("purchases", shop_key, orjson.dumps({"v": 1, "type": "purchase", "order_id": f"{tag}-o", "user_id": 77,
                                              "listing_id": winner["listing_id"], "shop_id": winner["shop_id"],
                                              "ts": now, "amount": 3.0}), "unattributed_purchase"),
        ("purchases", b"77", orjson.dumps({"v": 1, "type": "purchase", "order_id": f"{tag}-ok", "user_id": 77,
                                           "listing_id": winner["listing_id"], "shop_id": winner["shop_id"],
                                           "ts": now, "amount": 3.0}), "wrong_key"),
        ("purchases", b"424242", orjson.dumps({"v": 1, "type": "purchase", "order_id": f"{tag}-os", "user_id": 77,
                                               "listing_id": winner["listing_id"], "shop_id": 424242,
                                               "ts": now, "amount": 3.0}), "shop_mismatch"),
        ("listings", b"5", orjson.dumps({"v": 1, "type": "listing", "listing_id": 5, "shop_id": 1, "price": 1.0,
                                         "category": 1, "ts": now, "note": tag}), "unexpected_field"),
        ("shops", b"6", orjson.dumps({"v": 1, "type": "shop", "shop_id": 6, "daily_budget": -5.0,
                                      "target_share": 0.1, "ts": now + 1e-3 * len(tag)}), "out_of_range"),
    ]
    asyncio.run(send_raw(settings, bootstrap, [(t, k, v) for t, k, v, _ in cases]))
    wanted = {(t, v): r for t, _, v, r in cases}

    def found(rs: list[tuple[str, Any, bytes | None]]) -> dict[tuple[str, bytes | None], list[str]]:
        got: dict[tuple[str, bytes | None], list[str]] = {}
        for _, rec, _ in rs:
            if not rec:
                continue
            raw = base64.b64decode(rec["value_b64"]) if rec.get("value_b64") is not None else b""
            key = (rec["source_topic"], raw)
            if key in wanted:
                got.setdefault(key, []).append(rec["reason"])
        return got

    recs = asyncio.run(read_until(settings, bootstrap, ["dead-letters"], lambda rs: len(found(rs)) == len(wanted),
                                  timeout_s=45))
    got = found(recs)
    missing = {k[0] + ":" + r for k, r in wanted.items() if k not in got}
    assert not missing
    for k, reason in wanted.items():
        assert got[k] == [reason], (k[0], reason, got[k])
    # the good query was not dead-lettered, and the worker stayed up
    assert worker.process.poll() is None


def test_event_from_librdkafka_client_is_accepted(worker: Any, bootstrap: str, settings: Settings,
                                                  small_world: Any) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    q = make_query(small_world, f"rdkafka-{time.time_ns()}", seed=5)
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce("queries", key=q.query_id.encode(), value=encode(q))
    assert producer.flush(15) == 0
    out = outcome_of(settings, bootstrap, q.query_id)
    assert out["winners"]
