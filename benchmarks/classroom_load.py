"""Class load test (issue 14): students submit tiny runs while browser sessions keep Monitor open, against one
`streamlit run` server and one worker.

Sessions are websocket clients on loopback that speak Streamlit's own protocol, as a browser tab does: each
connects with its student's signed session cookie (what a reload sends), opens Monitor, follows the live panel's
`run_every` refreshes the server asks for, and reloads the whole page every --reload seconds. A render is timed
from the rerun request to the server's script_finished. Students submit through the engine (`submit.submit` with
their account, what the Train page calls); three of them queue five runs at once, the others one, and more
arrive at random so that the worker stays about busy.

Phases: probe runs with no sessions (training steps/s without the UI), the class for --minutes, the queue
drained, probe runs again with no sessions. At the end the store is checked: every run done exactly once (one
job, one attempt, one validation epoch), and each claim replayed against the fair rule of
engine/runs/queue.fair_order.

    .venv/bin/python benchmarks/classroom_load.py [--minutes 10] [--users 30] [--sessions 30] [--db-url URL]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GREEDY = 3                 # students who queue five runs at once in the first minute


def log(text: str) -> None:
    print(time.strftime("%H:%M:%S"), text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(math.ceil(q * len(ordered))) - 1))]


def summary_ms(values: list[float]) -> dict:
    return {"n": len(values), "p50": _ms(percentile(values, 0.5)), "p95": _ms(percentile(values, 0.95)),
            "max": _ms(max(values) if values else None)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ---- the class's runs ------------------------------------------------------------------------------------------

def run_config(dataset_id: str, seed: int):
    from engine.config import RunConfig
    return RunConfig(dataset_id=dataset_id, arch="lenet5", epochs=1, batch_size=8, image_size=48, preview_samples=0,
                     seed=seed)


def wait_idle(timeout: float) -> bool:
    """Until no run is queued, starting or running."""
    from engine.runs import store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(store.run_counts().get(s) for s in store.ACTIVE):
            return True
        time.sleep(0.5)
    return False


def probe(dataset_id: str, owner: str, n: int) -> list[str]:
    """n runs of the class's config with no session open; returns their ids once they are done."""
    from engine.runs import submit
    run_ids = [submit.submit(run_config(dataset_id, 1000 + i), owner=owner) for i in range(n)]
    wait_idle(60 * n)
    return run_ids


def steps_per_second(run_id: str) -> float | None:
    from engine.runs import store
    rows = [m for m in store.get_metrics(run_id) if m["name"] == "epoch_seconds"]
    return rows[-1]["step"] / rows[-1]["value"] if rows and rows[-1]["value"] else None


class Students:
    """Submitters: each student's runs at their times, from a small thread pool (the server's script threads)."""

    def __init__(self, dataset_id: str, names: list[str], seconds: float, extra: int, rng: random.Random):
        self.dataset_id, self.latencies, self.errors, self.run_ids = dataset_id, [], [], []
        plan = []
        for i, name in enumerate(names):
            first = rng.uniform(0, min(60.0, seconds / 4))
            plan += [(first + 0.2 * k, name) for k in range(5 if i < GREEDY else 1)]
        plan += [(rng.uniform(60.0, seconds * 0.9), rng.choice(names)) for _ in range(extra)]
        self.plan = sorted(plan)
        self.lock = threading.Lock()

    def submit(self, name: str, seed: int) -> None:
        from engine.runs import submit
        started = time.perf_counter()
        try:
            run_id = submit.submit(run_config(self.dataset_id, seed), owner=name)
        except Exception as exc:  # noqa: BLE001 - counted, shown in the report
            with self.lock:
                self.errors.append(repr(exc)[:200])
            return
        with self.lock:
            self.latencies.append(time.perf_counter() - started)
            self.run_ids.append(run_id)

    def run(self, stop: threading.Event) -> None:
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            for seed, (at, name) in enumerate(self.plan):
                if stop.wait(max(0.0, at - (time.monotonic() - t0))):
                    break
                pool.submit(self.submit, name, seed)


# ---- browser sessions ------------------------------------------------------------------------------------------

class Session:
    """One browser tab on Monitor, logged in by its cookie, over Streamlit's websocket protocol."""

    def __init__(self, url: str, origin: str, cookie: str, reload_every: float, stats: dict):
        self.url, self.origin, self.cookie, self.reload_every, self.stats = url, origin, cookie, reload_every, stats

    async def page_run(self, ws, state) -> float | None:
        """Send one rerun and wait for its script_finished; None when the connection broke."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
        msg = BackMsg()
        msg.rerun_script.CopyFrom(state)
        started = time.perf_counter()
        await ws.send(msg.SerializeToString())
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=120)
            except Exception:  # noqa: BLE001 - a dropped or stuck connection is counted, not raised
                self.stats["broken"] += 1
                return None
            fwd = ForwardMsg.FromString(raw)
            kind = fwd.WhichOneof("type")
            if kind == "navigation":
                self.page_hash = fwd.navigation.page_script_hash
            elif kind == "auto_rerun":
                self.fragment = (fwd.auto_rerun.fragment_id, fwd.auto_rerun.interval)
            elif kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                element = fwd.delta.new_element
                if element.WhichOneof("type") == "exception":
                    self.stats["exceptions"].append(element.exception.message[:200])
                elif element.WhichOneof("type") == "heading" and element.heading.tag == "h1":
                    self.title = element.heading.body
            elif kind == "script_finished":
                return time.perf_counter() - started

    async def open_page(self, stop: asyncio.Event) -> None:
        """One page load, then the live panel's refreshes until the next reload."""
        import websockets
        from streamlit.proto.ClientState_pb2 import ClientState
        self.page_hash, self.fragment, self.title = "", None, None
        try:
            ws = await websockets.connect(self.url, subprotocols=["streamlit"], max_size=None,
                                          additional_headers={"Cookie": self.cookie, "Origin": self.origin})
        except Exception:  # noqa: BLE001
            self.stats["broken"] += 1
            await asyncio.sleep(1)
            return
        try:
            seconds = await self.page_run(ws, ClientState(page_name="monitor"))
            if seconds is None:
                return
            self.stats["page"].append(seconds)
            self.stats["titles"][self.title] = self.stats["titles"].get(self.title, 0) + 1
            reload_at = time.monotonic() + self.reload_every
            while not stop.is_set() and time.monotonic() < reload_at:
                if self.fragment is None:       # a finished run has no live panel: just wait for the reload
                    await _wait(stop, reload_at - time.monotonic())
                    break
                fragment_id, interval = self.fragment
                if await _wait(stop, min(interval, max(0.0, reload_at - time.monotonic()))):
                    break
                if time.monotonic() >= reload_at:
                    break
                state = ClientState(page_script_hash=self.page_hash, fragment_id=fragment_id, is_auto_rerun=True)
                seconds = await self.page_run(ws, state)
                if seconds is None:
                    return
                self.stats["fragment"].append(seconds)
        finally:
            await ws.close()

    async def run(self, stop: asyncio.Event, delay: float) -> None:
        await _wait(stop, delay)
        while not stop.is_set():
            await self.open_page(stop)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or return True at once when stop is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
        return True
    except TimeoutError:
        return False


async def browse(port: int, names: list[str], seconds: float, reload_every: float, stats: dict) -> None:
    from pages import _auth
    stop = asyncio.Event()
    sessions = [Session(f"ws://127.0.0.1:{port}/_stcore/stream", f"http://127.0.0.1:{port}",
                        f"{_auth.COOKIE}={_auth.make_token(name)}", reload_every, stats) for name in names]
    tasks = [asyncio.create_task(s.run(stop, delay=i * reload_every / len(sessions))) for i, s in enumerate(sessions)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


async def warm_up(port: int, name: str) -> float | None:
    """One page load before the clock starts: the server's first run imports the pages and the engine."""
    from pages import _auth
    stats: dict = {"page": [], "fragment": [], "broken": 0, "exceptions": [], "titles": {}}
    await Session(f"ws://127.0.0.1:{port}/_stcore/stream", f"http://127.0.0.1:{port}",
                  f"{_auth.COOKIE}={_auth.make_token(name)}", 0.0, stats).open_page(asyncio.Event())
    return stats["page"][0] if stats["page"] else None


def start_server(env: dict) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                               "--server.address", "127.0.0.1", "--server.headless", "true"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return server, port
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the Streamlit server did not start within 2 minutes")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- checks on the store ---------------------------------------------------------------------------------------

def exactly_once(run_ids: list[str]) -> dict:
    from sqlalchemy import select

    from engine.runs import store
    with store.db().connect() as conn:
        jobs = conn.execute(select(store.jobs).where(store.jobs.c.run_id.in_(run_ids))).all()
    per_run: dict[str, int] = {}
    for job in jobs:
        per_run[job.run_id] = per_run.get(job.run_id, 0) + 1
    runs = [store.get_run(r) for r in run_ids]
    val_epochs = {r: [m["epoch"] for m in store.get_metrics(r) if m["split"] == "val" and m["name"] == "accuracy"]
                  for r in run_ids}
    return {
        "runs": len(run_ids),
        "done": sum(r["status"] == "done" for r in runs),
        "not_done": {r["id"]: r["status"] for r in runs if r["status"] != "done"},
        "attempts_not_1": sum(r["attempts"] != 1 for r in runs),
        "jobs_not_1": sum(per_run.get(r, 0) != 1 for r in run_ids),
        "jobs_claimed_twice": sum(j.claimed_at is None for j in jobs if j.status != "finished"),
        "val_epochs_not_[1]": sum(v != [1] for v in val_epochs.values()),
    }


def replay_fair_order(run_ids: list[str], slack: float = 1.0) -> dict:
    """Replay each claim (one worker, one slot: nobody has a run going when the next is claimed) against the rule:
    the owner served least recently (never served first), then the oldest job. A job created within `slack`
    seconds of the claim may not have been committed yet when the claim read the queue; such cases are counted
    apart, not as violations."""
    from sqlalchemy import select

    from engine.runs import store
    q = (select(store.jobs.c.id, store.jobs.c.created_at, store.jobs.c.claimed_at, store.runs.c.owner)
         .select_from(store.jobs.join(store.runs, store.runs.c.id == store.jobs.c.run_id))
         .where(store.jobs.c.run_id.in_(run_ids)))
    with store.db().connect() as conn:
        jobs = [j for j in conn.execute(q).all() if j.claimed_at is not None]
    claims = sorted(jobs, key=lambda j: j.claimed_at)
    served: dict = {}
    checked = violations = excused = 0
    examples = []
    for claim in claims:
        waiting = [j for j in jobs if j.created_at < claim.claimed_at and j.claimed_at >= claim.claimed_at]
        best: dict = {}
        for job in waiting:
            if job.owner not in best or job.id < best[job.owner].id:
                best[job.owner] = job
        expected = min(best.values(), key=lambda j: (served.get(j.owner, float("-inf")), j.id))
        checked += 1
        if expected.owner != claim.owner:
            if claim.claimed_at - expected.created_at < slack:
                excused += 1
            else:
                violations += 1
                examples.append({"claimed": claim.owner, "expected": expected.owner})
        served[claim.owner] = claim.claimed_at
    return {"claims_checked": checked, "violations": violations, "excused_commit_race": excused,
            "examples": examples[:5]}


def waits(run_ids: list[str], greedy: set[str]) -> dict:
    """Submit → start per run; first runs of each student against the greedy students' later runs."""
    from engine.runs import store
    runs = sorted((store.get_run(r) for r in run_ids), key=lambda r: r["created_at"])
    seen: set = set()
    first, later_greedy, all_waits = [], [], []
    for run in runs:
        if run["started_at"] is None:
            continue
        wait = run["started_at"] - run["created_at"]
        all_waits.append(wait)
        if run["owner"] not in seen:
            first.append(wait)
        elif run["owner"] in greedy:
            later_greedy.append(wait)
        seen.add(run["owner"])
    return {"all_s": _seconds(all_waits), "first_run_of_each_student_s": _seconds(first),
            "greedy_students_later_runs_s": _seconds(later_greedy)}


def _seconds(values: list[float]) -> dict:
    return {"n": len(values), "p50": _round(percentile(values, 0.5)), "p95": _round(percentile(values, 0.95)),
            "max": _round(max(values) if values else None)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# ---- the whole test --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--reload", type=float, default=30.0, help="seconds between full page loads of a session")
    parser.add_argument("--probes", type=lambda v: max(1, int(v)), default=3,
                        help="runs trained with no session, before and after (at least 1: they pace the class)")
    parser.add_argument("--drain-minutes", type=float, default=5.0,
                        help="after the class, wait this long for the queue to empty; runs still queued are cancelled")
    parser.add_argument("--images", type=int, default=400, help="demo dataset size")
    parser.add_argument("--db-url", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the JSON report here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    home = tempfile.mkdtemp(prefix="lightbox-class-")
    os.environ.update(LIGHTBOX_HOME=home, LIGHTBOX_NO_AUTOWORKER="1")
    if args.db_url:
        os.environ["LIGHTBOX_DB_URL"] = args.db_url
    from engine.accounts import users
    from engine.data.demo import write_demo
    from engine.data.ingest import ingest
    from engine.runs import lifecycle, store

    dataset_id = ingest(write_demo("classification", Path(home) / "src", n=args.images, size=64, seed=1),
                        task="classification").dataset_id
    names = [f"student{i:02d}" for i in range(1, args.users + 1)]
    for name in names + ["probe"]:
        users.add_user(name, "student", f"pass-{name}-0")
    users.add_user("teacher", "instructor", "pass-teacher-0")
    env = dict(os.environ)
    worker = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--slots", "1", "--poll", "0.5"], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    server = None
    try:
        t = time.monotonic()
        before = probe(dataset_id, "probe", args.probes)
        cycle = (time.monotonic() - t) / args.probes             # seconds per run, worker idle otherwise
        log(f"probes before: {cycle:.1f} s per run")
        seconds = args.minutes * 60
        initial = (args.users - GREEDY) + 5 * GREEDY
        # Enough runs to keep the worker busy (assuming the class slows it by a third), not a queue that outlasts
        # the window by much: fair order only shows when runs wait.
        extra = max(0, int(seconds / (cycle * 1.35)) - initial)
        server, port = start_server(env)
        first_load = asyncio.run(warm_up(port, names[0]))
        log(f"server up; first page load {first_load} s")
        students = Students(dataset_id, names, seconds, extra, rng)
        stats: dict = {"page": [], "fragment": [], "broken": 0, "exceptions": [], "titles": {}}
        stop = threading.Event()
        submitter = threading.Thread(target=students.run, args=(stop,))
        cpu0, t0, wall0 = cpu_seconds(server.pid), time.monotonic(), time.time()
        submitter.start()
        asyncio.run(browse(port, names[: args.sessions], seconds, args.reload, stats))
        stop.set()
        submitter.join()
        server_cpu = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        log(f"class over: {len(students.run_ids)} runs submitted, {len(stats['page'])} page loads, "
            f"{len(stats['fragment'])} panel refreshes, titles {stats['titles']}, broken {stats['broken']}")
        # Runs trained from start to end while the sessions were on.
        loaded = [r for r in students.run_ids if (store.get_run(r)["finished_at"] or math.inf) <= wall0 + seconds]
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        server = None
        drain_started = time.monotonic()
        drained = wait_idle(60 * args.drain_minutes)
        drain_s = time.monotonic() - drain_started
        left = [r for r in students.run_ids if store.get_run(r)["status"] == "queued"]
        for run_id in left:
            lifecycle.cancel(run_id)
        wait_idle(600)
        log(f"drained: {drained} after {drain_s:.0f} s; {len(left)} runs cancelled unstarted")
        after = probe(dataset_id, "probe", args.probes)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        if server is not None:
            server.kill()

    without = [v for v in map(steps_per_second, before + after) if v]
    with_ui = [v for v in map(steps_per_second, loaded) if v]
    report = {
        "minutes": args.minutes, "users": args.users, "sessions": args.sessions, "reload_s": args.reload,
        "db": store.db().dialect.name, "cpus": os.cpu_count(),
        "run": f"lenet5, 1 epoch, 48 px, batch 8, demo classification with {args.images} images",
        "probe_cycle_s": round(cycle, 2), "runs_submitted": len(students.run_ids), "submit_errors": students.errors[:5],
        "submit_latency_ms": summary_ms(students.latencies),
        "monitor_page_load_ms": summary_ms(stats["page"]),
        "monitor_live_panel_ms": summary_ms(stats["fragment"]),
        "first_page_load_after_server_start_ms": _ms(first_load),
        "sessions_broken": stats["broken"], "page_exceptions": stats["exceptions"][:5],
        "page_titles": stats["titles"], "server_cpu_cores": round(server_cpu, 2),
        "steps_per_s_without_sessions": {"median": _round(statistics.median(without)) if without else None,
                                         "n": len(without),
                                         "before": _round(statistics.median(filter(None, map(steps_per_second, before)))),
                                         "after": _round(statistics.median(filter(None, map(steps_per_second, after))))},
        "steps_per_s_with_sessions": {"median": _round(statistics.median(with_ui)) if with_ui else None,
                                      "n": len(with_ui)},
        "throughput_lost_percent": (round(100 * (1 - statistics.median(with_ui) / statistics.median(without)), 1)
                                    if with_ui and without else None),
        "drained": drained, "drain_s": round(drain_s, 1), "cancelled_unstarted_at_end": len(left),
        "exactly_once": exactly_once([r for r in students.run_ids if r not in left] + before + after),
        "fair_order": replay_fair_order(students.run_ids),
        "waits": waits(students.run_ids, set(names[:GREEDY])),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
