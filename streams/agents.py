"""The agents: thin handlers that read (decode, catch up), call the pure core to decide, and write.

=================  =============  ==========================================================  ===========
agent              topic in       does                                                         out
=================  =============  ==========================================================  ===========
``bid``            queries        batches(batch_max) -> decode -> BidPipeline.process         auctions, impressions
``bill``           clicks         charge once by click_id, clamp to budget (concurrency=1)     billing, labels
(spend timer)      (the ledger)   each changed own partition's spend per shop today            shop-spend
``attribute``      purchases      last click by buyer on listing within the window             labels, orders
(catalog check)     listings/shops validate, outside Faust (``streams/catalog_check.py``)        dead-letters
=================  =============  ==========================================================  ===========

``clicks`` and ``purchases`` are both keyed by shop, so the worker that decides a shop's clicks (its ``billing``
partition: the exact ledger, and the shop's clicks by buyer) attributes the shop's orders: no worker reads
another partition's clicks or ledger lines.

Sends, dead letters and poison records are ``streams/outputs.py``'s. Effects are idempotent (click ids,
order ids, query ids) because Faust reprocesses up to one commit interval after every rebalance
(faust-streaming #502).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import faust
import orjson

from bidder.clicks.billing import LedgerEntry
from bidder.clicks.click_decisions import ClickBatch, ClickDecision
from bidder.clicks.shop_spend import SPEND_TOPIC, SpendRecord
from bidder.decoding import Rejection
from bidder.events import AuctionOutcome, Click, Purchase, Query, to_json
from bidder.labels.attribution import label_update, provisional_labels
from bidder.labels.purchase_decisions import Conversion, PurchaseBatch, PurchaseDecision, Repeated
from bidder.query.shadow import shadow_outcomes
from bidder.replica.state import ORDERS_TOPIC
from bidder.topics import TOPICS
from streams.batching import batches
from streams.metrics import STAGES
from streams.outputs import Handler, WorkerNotReadyError
from streams.runtime import Runtime
from streams.workarounds import exit_for_restart

__all__ = ["add_agents", "each_message", "handle_catalog", "handle_clicks", "handle_purchase", "handle_queries",
           "publish_spend"]

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


# -- queries -> auctions ---------------------------------------------------------------------------
async def handle_queries(rt: Runtime, events: Sequence[Any]) -> None:
    """The bid agent: decode a batch of queries, run their auctions, write each outcome and its
    provisional labels, wait for every acknowledgement, then feed the drift and calibration monitors."""
    start = rt.clock()
    queries: list[Query] = []
    sources: dict[str, Any] = {}
    for ev in events:
        q = rt.decode(ev.message, start)
        if isinstance(q, Rejection):
            await rt.out.dead_letter(ev.message, q)
        else:
            queries.append(q)
            sources[q.query_id] = ev.message
    if not queries:
        return
    pending: list[Any] = []
    answered = 0
    for q, o in zip(queries, _run_auctions(rt, queries), strict=True):
        sent = await _write_outcome(rt, q, o, sources[q.query_id], start)
        pending += sent
        answered += bool(sent)
    await asyncio.gather(*pending)
    await rt.monitors.watch_drift(start)
    await rt.monitors.watch_calibration()
    rt.counts["queries"] += len(queries)
    rt.metrics.queries.inc(answered)
    rt.metrics.batch_size.observe(len(events))
    rt.metrics.replica_lag.set(rt.replica.lag())


def _run_auctions(rt: Runtime, queries: list[Query]) -> list[AuctionOutcome]:
    outcomes = rt.pipeline.process(queries, score=rt.batch_score if rt.batcher is not None else None)
    if rt.shadow is not None:  # after the auctions: the shadow prices nothing
        t0 = time.perf_counter()
        outcomes = shadow_outcomes(rt.shadow, outcomes)
        rt.metrics.shadow_seconds.observe(time.perf_counter() - t0)
    return outcomes


async def _write_outcome(rt: Runtime, q: Query, o: AuctionOutcome, source: Any, start: float) -> list[Any]:
    """Send the outcome and its provisional labels (their deliveries, not awaited), or dead-letter a query
    none of whose candidates is known (nothing sent)."""
    if o.n_unknown >= o.n_candidates:
        await rt.out.dead_letter(source, Rejection(
            "no_known_candidates", f"none of {o.n_candidates} candidate listings is in the catalog"))
        return []
    timed = replace(o, timings_ms={**o.timings_ms, "queue": max(0.0, (start - q.ts) * 1000.0)})
    for name in STAGES:
        rt.metrics.stage_seconds.labels(stage=name).observe(timed.timings_ms.get(name, 0.0) / 1000.0)
    data = to_json(timed)
    sign = rt.signer.sign
    for w in data["winners"]:  # the click URL of each winner (bidder/clicks/click_token.py)
        w["click_token"] = sign(o.query_id, slot=w["slot"], listing_id=w["listing_id"], shop_id=w["shop_id"],
                                price=w["price"], shown_at=o.ts)
    auction = await rt.out.send("auctions", TOPICS["auctions"].key_of(q), orjson.dumps(data, option=_NUMPY))
    rt.state.own_outcome(data)  # calibration matures this worker's own outcomes
    # impressions become provisional negative examples right away, on a topic of their own (keyed by query)
    examples = provisional_labels(data)
    return [auction, await rt.out.send("impressions", TOPICS["impressions"].key_of(examples),
                                       orjson.dumps(examples, option=_NUMPY))]


# -- clicks -> billing -----------------------------------------------------------------------------
async def handle_clicks(rt: Runtime, events: Sequence[Any]) -> None:
    """The bill agent: decide a batch of clicks in order (:class:`bidder.clicks.click_decisions.ClickBatch`: each
    sees the spend of those before it, not the ledger fold); write the ledger lines and label updates
    together, wait for every acknowledgement, and only then fold the lines in. A batch cut short (a
    failed write, a rebalance) leaves the fold untouched: the redelivered clicks are decided again
    against the ledger as the broker has it. If a write fails the process exits and rebuilds from
    the ledger."""
    decisions = await _decide_clicks(rt, events)
    # nothing is written until every decision is made: the replica folds our own lines as soon as
    # the broker has them, and the batch's pending spend must not count them a second time. Nothing
    # after this point raises out of the handler (a failed write exits): a batch tried again record
    # by record (handle_isolating) never has half of its lines written.
    try:
        writes, labels = await _write_click_decisions(rt, decisions)
        metas = await asyncio.gather(*(f for _, f, _ in writes), *labels)
    except Exception:
        # at once (not leaving the aggregator group first): nothing more may run on this money state
        exit_for_restart("ledger write failed; exiting so the money state is rebuilt from the ledger",
                         exc_info=True)
    for (part, _, entry), meta in zip(writes, metas, strict=False):
        rt.state.apply_own_ledger(entry, partition=part, offset=int(meta.offset))


async def _decide_clicks(rt: Runtime, events: Sequence[Any]) -> list[tuple[int, ClickDecision]]:
    """(partition, decision) of each click that gets a ledger line; the others are dead-lettered."""
    state = rt.state
    batch = ClickBatch(signer=rt.signer, catalog=state.catalog, ledger=state.ledger,
                       click_window_s=rt.settings.click_window_s)
    decisions: list[tuple[int, ClickDecision]] = []
    now = rt.clock()
    for ev in events:
        message = ev.message
        click = rt.decode(message, now)
        if isinstance(click, Rejection):
            await rt.out.dead_letter(message, click)
            continue
        assert isinstance(click, Click)
        await own_caught_up(rt, message.partition)
        decided = batch.decide(click)
        if isinstance(decided, Rejection):
            await rt.out.dead_letter(message, decided)
        else:
            decisions.append((message.partition, decided))
    return decisions


async def own_caught_up(rt: Runtime, partition: int) -> None:
    """Rebuild a partition's ledger and attributed orders (the replica reads ``billing`` and ``orders`` of it to
    their ends) before deciding anything on it: a click or a purchase of that partition number."""
    if partition not in rt.billing_ready:
        await rt.replica.add_own(partition)
        if not await rt.replica.wait_caught_up(["billing", ORDERS_TOPIC],
                                               partitions={"billing": partition, ORDERS_TOPIC: partition}):
            raise WorkerNotReadyError(f"billing partition {partition} did not catch up")
        rt.billing_ready.add(partition)


async def publish_spend(rt: Runtime) -> int:
    """Publish the spend per shop today of each ``billing`` partition this worker decides whose spend changed
    since the last call (``shop-spend``, :mod:`bidder.clicks.shop_spend`); returns the records sent."""
    state = rt.state
    changed = state.take_spend_changes(rt.billing_ready)
    now = rt.clock()
    sent = [await rt.out.send(SPEND_TOPIC, str(p).encode(),
                              SpendRecord.of_ledger(state.ledger, partition=p, day=day,
                                                    shop_ids=state.billing_shops.get(p, ()), at=now).encode())
            for p, day in sorted(changed.items())]
    await asyncio.gather(*sent)
    return len(sent)


async def _write_click_decisions(rt: Runtime, decisions: list[tuple[int, ClickDecision]]
                                 ) -> tuple[list[tuple[int, Any, LedgerEntry]], list[Any]]:
    """Send each decision's ledger line (and its label update); returns (partition, delivery, entry)
    per line and the label deliveries, not awaited."""
    writes: list[tuple[int, Any, LedgerEntry]] = []
    labels: list[Any] = []
    for part, d in decisions:
        click, entry = d.click, d.entry
        line = entry.to_dict()
        writes.append((part, await rt.out.send("billing", TOPICS["billing"].key_of(line), orjson.dumps(line),
                                               partition=part), entry))
        _count_click(rt, entry)
        if entry.status != "duplicate":
            update = label_update(query_id=click.query_id, slot=click.slot, listing_id=click.listing_id, ts=click.ts,
                                  click_id=click.click_id)
            labels.append(await rt.out.send("labels", TOPICS["labels"].key_of(update), orjson.dumps(update)))
    return writes, labels


def _count_click(rt: Runtime, entry: LedgerEntry) -> None:
    rt.counts[f"clicks_{entry.status}"] += 1
    rt.metrics.clicks.labels(status=entry.status).inc()
    if entry.status == "charged":
        rt.metrics.charged.inc(entry.amount)
        if entry.amount < entry.price:
            rt.metrics.budget_exhausted.inc()
    elif entry.status == "unbilled":
        rt.metrics.unbilled.inc(entry.price)


# -- purchases -> labels ---------------------------------------------------------------------------
async def handle_purchase(rt: Runtime, message: Any) -> None:
    """The attribute agent: decide the purchase (:class:`bidder.labels.purchase_decisions.PurchaseBatch`) against
    the clicks this worker decided for the purchase's shop (purchases are keyed by shop, like clicks); one whose
    click is not decided yet is decided again once the bill agent has decided every click of the partition
    sent before it (``await_decided_clicks``); write its label update and its ``orders`` record, or its dead
    letter."""
    purchase = rt.decode(message, rt.clock())
    if isinstance(purchase, Rejection):
        await rt.out.dead_letter(message, purchase)
        return
    assert isinstance(purchase, Purchase)
    state = rt.state
    row = state.catalog.shop_row_of_listing(purchase.listing_id)
    sold_by = None if row is None else int(state.catalog.shop_ids[row])
    if sold_by is not None and sold_by != purchase.shop_id:
        await rt.out.dead_letter(message, Rejection(
            "shop_mismatch", f"listing {purchase.listing_id} is sold by shop {sold_by}, not {purchase.shop_id}"))
        return
    await own_caught_up(rt, message.partition)
    batch = PurchaseBatch(clicks=state.clicks, attributed=state.order_attributed)
    decision: PurchaseDecision = batch.decide(purchase)
    if isinstance(decision, Rejection):
        decision = await await_decided_clicks(rt, batch, purchase, partition=message.partition)
    if isinstance(decision, Repeated):
        rt.counts["purchases_repeated"] += 1
    elif isinstance(decision, Rejection):
        await rt.out.dead_letter(message, decision)
    else:
        await _write_conversion(rt, decision, partition=message.partition)


async def _write_conversion(rt: Runtime, conversion: Conversion, *, partition: int) -> None:
    """The label update (keyed by query) and the ``orders`` record (on the purchase's partition), both
    acknowledged before the order counts as attributed here."""
    update = conversion.label()
    order = conversion.order_record()
    sent = [await rt.out.send("labels", TOPICS["labels"].key_of(update), orjson.dumps(update)),
            await rt.out.send(ORDERS_TOPIC, TOPICS[ORDERS_TOPIC].key_of(order), orjson.dumps(order),
                              partition=partition)]
    await asyncio.gather(*sent)
    rt.state.own_order(conversion.purchase.order_id)
    rt.counts["purchases_attributed"] += 1
    rt.metrics.conversions.inc()


async def await_decided_clicks(rt: Runtime, batch: PurchaseBatch, purchase: Purchase, *,
                               partition: int) -> Conversion | Rejection:
    """The click a purchase belongs to may be on ``clicks`` but not decided yet: clicks and purchases are two
    topics read by two agents, and a buyer can buy within a second of clicking. Both are keyed by shop, so
    that click is on this partition number of ``clicks``, decided by this worker's bill agent: wait until it
    has decided every click that was on the partition when the purchase was handled (or the purchase is
    attributed), at most ``purchase_click_wait_s``; then decide again. Refusing at once would lose real
    conversions (the labels' CVR biased low: 9-256 per test run before a wait was built)."""
    end = await rt.replica.end_offset("clicks", partition)
    deadline = time.monotonic() + rt.settings.purchase_click_wait_s
    waited = False
    while True:
        # attributed again first, every time: the bill agent may have finished a batch during any await here
        decision = batch.attribute(purchase)
        remaining = deadline - time.monotonic()
        if isinstance(decision, Conversion):
            return decision
        if rt.clicks_decided(partition) >= end:
            return _with_clicks(decision, rt, partition, end)
        if remaining <= 0:
            rt.counts["purchases_wait_expired"] += 1
            return _with_clicks(decision, rt, partition, end, expired=True)
        if not waited:
            rt.counts["purchases_waited"] += 1
            waited = True
        await rt.wait_clicks_decided(timeout_s=min(remaining, 0.1))


def _with_clicks(refused: Rejection, rt: Runtime, partition: int, end: int, *, expired: bool = False) -> Rejection:
    """The refusal, saying how far the partition's clicks were decided (what an operator asks first)."""
    done = rt.clicks_done_to.get(partition, 0), rt.committed_of("clicks", partition)
    wait = (f"not all decided after {rt.settings.purchase_click_wait_s:g}s" if expired else "all decided")
    return Rejection(refused.reason, f"{refused.detail}; clicks[{partition}] before offset {end}: {wait} "
                                     f"(this worker's bill agent to {done[0]}, committed {done[1]})")


# -- listings and shops (the catalog check, outside Faust) -------------------------------------------
async def handle_catalog(rt: Runtime, message: Any) -> None:
    ev = rt.decode(message, rt.clock(), rt.limits.for_catalog())
    if isinstance(ev, Rejection):
        await rt.out.dead_letter(message, ev)


# -- the Faust agents ------------------------------------------------------------------------------
def each_message(rt: Runtime, handle_one: Callable[[Runtime, Any], Awaitable[None]]) -> Handler:
    """A batch handler calling ``handle_one`` on each event's message in turn."""
    async def each(events: Sequence[Any]) -> None:
        for ev in events:
            await handle_one(rt, ev.message)

    return each


def add_agents(app: faust.App, rt: Runtime) -> None:
    """The bid, bill and attribute agents, each ``bidder.<topic>`` with concurrency 1."""
    s = rt.settings
    _add_agent(app, rt, "queries", functools.partial(handle_queries, rt),
               lambda stream: batches(stream, s.batch_max, within_s=s.batch_within_s))
    _add_agent(app, rt, "clicks", functools.partial(handle_clicks, rt),
               lambda stream: batches(stream, 200, within_s=0.0), done=rt.clicks_done)
    _add_agent(app, rt, "purchases", each_message(rt, handle_purchase), _one_at_a_time)
    app.timer(interval=s.spend_publish_ms / 1000.0)(functools.partial(publish_spend, rt))


async def _one_at_a_time(stream: Any) -> AsyncIterator[list[Any]]:
    async for ev in stream.events():
        yield [ev]


def _add_agent(app: faust.App, rt: Runtime, topic: str, handler: Handler,
               take: Callable[[Any], AsyncIterator[Sequence[Any]]],
               *, done: Callable[[Sequence[Any]], None] | None = None) -> None:
    """Agent ``bidder.<topic>``: ``handler`` on each batch ``take`` cuts, poison records isolated; ``done`` is told
    of each batch finished (decided, written, acknowledged or dead-lettered)."""
    handle = rt.out.with_fault_marker(handler, topic=topic)

    async def agent(stream: Any) -> None:
        async for events in take(stream):
            await rt.replica.ready.wait()
            try:
                taken = await rt.with_skipped(events)
                await rt.out.handle_isolating(topic, handle, taken)
                if done is not None:
                    done(taken)
            except Exception:  # see _crashed()
                await _crashed(rt, topic)

    agent.__name__ = f"{topic.replace('-', '_')}_agent"
    app.agent(rt.out.topics[topic], name=f"bidder.{topic}", concurrency=1)(agent)


async def _crashed(rt: Runtime, topic: str) -> NoReturn:
    """An exception out of a handler (sends are already retried in ``Outputs.send``): exit (70).

    faust-streaming's ``Agent._execute_actor`` catches it, marks the actor crashed ("Agent crashed
    reason=...") and the worker process keeps running: the events taken for the batch are never
    answered and nothing outside the process sees it (seen in ``t2tansu_stay`` before sends were
    retried; faust-streaming #324 and #329 are about how hard it is to stop a worker from inside
    one). Exiting makes the pod (or the chaos harness) restart the worker, which resumes from the
    committed offsets; outputs are idempotent by their ids, as ``handle_clicks`` already assumes."""
    await rt.exit_for_restart("%s agent failed; exiting so the worker is restarted", topic, exc_info=True)
