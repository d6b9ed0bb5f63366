"""Bandit benchmark: LinUCB select+update throughput on one core, and simulated CTR / regret.

    .venv/bin/python benchmarks/bandit.py [--quick] [--out bggen_data/bench/bandit.png]

1. Throughput with d = 34 (default_schema) and 3 arms, numpy/BLAS pinned to one thread and the
   process pinned to one CPU: ours vs a straightforward per-arm numpy LinUCB (same maths) and
   mabwiser (predict + partial_fit per event), side by side.
2. Simulation on the realistic click model (CTR 0.5%-8%): random, UCB1, the best fixed theme
   (the ceiling of any context-free policy), LinUCB, LinUCB on 4 replicas merging deltas, and
   the oracle.  A table of cumulative CTR / regret and a PNG; how often each theme is the best
   one; the oracle's gain; LinUCB's regret for several alpha.
3. The unit tests' setting (fast click model, 3,000 impressions, seeds 0-3): LinUCB's regret as
   a ratio of random's and UCB1's, per seed.
4. Off-policy evaluation in simulation: ε-greedy LinUCB logs on the realistic click model; for
   each candidate (the oracle, the best fixed theme, random, UCB1, LinUCB with other alphas) IPS,
   SNIPS and DR with 95% bootstrap intervals beside its true CTR on the logged users, the error,
   and whether the interval covers it.
5. Events in: impressions and clicks per second through ``POST /events`` (batches of 1,000, over
   HTTP to uvicorn, SQLite) and through the ``ad_events`` import (JSON lines and Parquet files in
   the object store), on the world of benchmarks/serving.py (built once under --data).
"""
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bggen_assets.core.bandit import LinUCB, RandomPolicy, UCB1, default_schema  # noqa: E402
from bggen_assets.core.bandit_simulation import (  # noqa: E402
    ClickModel, FixedPolicy, OraclePolicy, best_fixed_arm, simulate, simulate_replicas,
)

ARMS = ("1", "2", "3")


class NaiveLinUCB:
    """The textbook loop: per arm A^-1 and b as separate arrays, theta at select time."""

    def __init__(self, arms, dim, alpha=1.0):
        self.arms = tuple(arms)
        self.alpha = alpha
        self.Ainv = {a: np.eye(dim) for a in arms}
        self.b = {a: np.zeros(dim) for a in arms}
        self.A = {a: np.eye(dim) for a in arms}

    def select(self, x, rng=None):
        best, arm = -math.inf, None
        for a in self.arms:
            Ainv = self.Ainv[a]
            s = (Ainv @ self.b[a]) @ x + self.alpha * math.sqrt(x @ Ainv @ x)
            if s > best:
                best, arm = s, a
        return arm

    def update(self, arm, x, reward):
        Ainv = self.Ainv[arm]
        v = Ainv @ x
        self.Ainv[arm] = Ainv - np.outer(v, v) / (1.0 + v @ x)
        self.A[arm] += np.outer(x, x)
        self.b[arm] += reward * x


def _throughput(pol, X, R, reps):
    """Best-of-reps rates for select, update, select+update."""
    n = len(X)
    rows = [X[i] for i in range(n)]
    rl = R.tolist()
    best = {"select": 0.0, "update": 0.0, "select+update": 0.0}
    for _ in range(reps):
        select, update = pol.select, pol.update
        t = time.perf_counter()
        for x in rows:
            select(x)
        best["select"] = max(best["select"], n / (time.perf_counter() - t))
        arms = [pol.arms[i % len(pol.arms)] for i in range(n)]
        t = time.perf_counter()
        for a, x, r in zip(arms, rows, rl):
            update(a, x, r)
        best["update"] = max(best["update"], n / (time.perf_counter() - t))
        t = time.perf_counter()
        for x, r in zip(rows, rl):
            update(select(x), x, r)
        best["select+update"] = max(best["select+update"], n / (time.perf_counter() - t))
    return best


def _mabwiser_rate(X, R, n):
    from mabwiser.mab import MAB, LearningPolicy

    mab = MAB(list(ARMS), LearningPolicy.LinUCB(alpha=1.0, l2_lambda=1.0), seed=0)
    mab.fit(list(ARMS), [0.0] * len(ARMS), X[: len(ARMS)])
    t = time.perf_counter()
    for i in range(n):
        x = X[i: i + 1]
        a = mab.predict(x)
        mab.partial_fit([a], [R[i]], x)
    return n / (time.perf_counter() - t)


def bench_throughput(quick):
    schema = default_schema()
    d = schema.dim
    model = ClickModel.synthetic(schema, ARMS, seed=0)
    rng = np.random.default_rng(0)
    n = 20_000 if quick else 100_000
    X = model.sample_contexts(n, rng)
    R = (rng.random(n) < 0.03).astype(float)
    reps = 2 if quick else 3

    feats = [{"country": "de", "gender": "female", "device": "mobile", "subcategory": "shoes",
              "colour": "red", "aspect": "wide", "size": "small"}] * 20_000
    t = time.perf_counter()
    for f in feats:
        schema.encode(f)
    enc_rate = len(feats) / (time.perf_counter() - t)

    ours = _throughput(LinUCB(ARMS, d, alpha=1.0, seed=0), X, R, reps)
    naive = _throughput(NaiveLinUCB(ARMS, d), X[: n // 4], R[: n // 4], reps)
    mw = _mabwiser_rate(X, R, 300 if quick else 1000)

    print(f"\n## Throughput (one core, d={d}, {len(ARMS)} arms, {n:,} events, best of {reps})")
    print(f"| {'implementation':32s} | {'select/s':>10s} | {'update/s':>10s} | {'select+update/s':>15s} |")
    print(f"|{'-' * 34}|{'-' * 12}|{'-' * 12}|{'-' * 17}|")
    for name, r in (("bggen LinUCB", ours), ("naive numpy LinUCB", naive)):
        print(f"| {name:32s} | {r['select']:10,.0f} | {r['update']:10,.0f} | {r['select+update']:15,.0f} |")
    print(f"| {'mabwiser 2.7 predict+partial_fit':32s} | {'':>10s} | {'':>10s} | {mw:15,.0f} |")
    print(f"\nselect+update: {ours['select+update']:,.0f}/s = "
          f"{1e6 / ours['select+update']:.1f} us per event; "
          f"{ours['select+update'] / naive['select+update']:.1f}x the naive loop, "
          f"{ours['select+update'] / mw:.0f}x mabwiser; target >= 50,000/s: "
          f"{'PASS' if ours['select+update'] >= 50_000 else 'FAIL'}")
    print(f"ContextSchema.encode: {enc_rate:,.0f}/s")
    return ours


def bench_simulation(quick, out):
    n = 20_000 if quick else 200_000
    seeds = [0] if quick else [0, 1, 2]
    d = default_schema().dim
    policies = {
        "random": lambda m, s: simulate(RandomPolicy(ARMS, seed=s), n, s, m),
        "UCB1 (c=sqrt 2)": lambda m, s: simulate(UCB1(ARMS, seed=s), n, s, m),
        "best fixed theme": lambda m, s: simulate(FixedPolicy(m.arms, best_fixed_arm(m, n, s)), n, s, m),
        "LinUCB (alpha=1)": lambda m, s: simulate(LinUCB(ARMS, d, alpha=1.0, seed=s), n, s, m),
        "LinUCB, 4 replicas": lambda m, s: simulate_replicas(
            lambda: LinUCB(ARMS, d, alpha=1.0, seed=s), n, s, m, replicas=4, sync_every=1000),
        "oracle": lambda m, s: simulate(OraclePolicy(m), n, s, m),
    }
    res = {k: [] for k in policies}
    secs = {k: 0.0 for k in policies}
    best_share = {}
    models = {s: ClickModel.synthetic(default_schema(), ARMS, seed=s) for s in seeds}
    for s, model in models.items():
        for name, run in policies.items():
            t = time.perf_counter()
            res[name].append(run(model, s))
            secs[name] += time.perf_counter() - t
        best_share[s] = np.bincount(res["oracle"][-1].choices, minlength=len(ARMS)) / n

    checkpoints = [c for c in (1_000, 10_000, 50_000, 200_000) if c <= n]
    rnd_ctr = np.mean([r.expected[-1] / n for r in res["random"]])
    print(f"\n## Simulation: realistic click model (CTR 0.5%-8%), {len(ARMS)} themes, d={d}, "
          f"n={n:,} impressions, mean of seeds {seeds}")
    hdr = " | ".join(f"CTR@{c // 1000}k" for c in checkpoints)
    print("CTR = mean true click probability of the themes shown so far (cumulative); clicks = "
          "sampled clicks / impressions at the end")
    print(f"| {'policy':20s} | {hdr} | clicks | regret@{n // 1000}k | uplift vs random | s/run |")
    print(f"|{'-' * 22}|" + "|".join("-" * (len(f'CTR@{c // 1000}k') + 2) for c in checkpoints)
          + f"|--------|{'-' * (len(f'regret@{n // 1000}k') + 2)}|{'-' * 18}|-------|")
    for name, rs in res.items():
        ctrs = " | ".join(
            f"{np.mean([r.expected[c - 1] / c for r in rs]) * 100:>{len(f'CTR@{c // 1000}k') - 1}.2f}%"
            for c in checkpoints)
        reg = np.mean([r.regret[-1] for r in rs])
        up = np.mean([r.expected[-1] / n for r in rs]) / rnd_ctr - 1
        clk = np.mean([r.clicks[-1] / n for r in rs]) * 100
        print(f"| {name:20s} | {ctrs} | {clk:5.2f}% | {reg:{len(f'regret@{n // 1000}k')}.0f} | {up * 100:+15.1f}% | "
              f"{secs[name] / len(seeds):5.1f} |")
    lin = np.mean([r.regret[-1] for r in res["LinUCB (alpha=1)"]])
    ucb = np.mean([r.regret[-1] for r in res["UCB1 (c=sqrt 2)"]])
    rr = np.mean([r.regret[-1] for r in res["random"]])
    print(f"\nLinUCB regret = {lin / rr:.2f}x random, {lin / ucb:.2f}x UCB1 "
          f"(regret = expected clicks lost vs the oracle)")
    oracle_ctr = np.mean([r.expected[-1] / n for r in res["oracle"]])
    fixed_ctr = np.mean([r.expected[-1] / n for r in res["best fixed theme"]])
    print(f"oracle CTR = {oracle_ctr / rnd_ctr - 1:+.1%} vs random, "
          f"{oracle_ctr / fixed_ctr - 1:+.1%} vs the best fixed theme")
    print("\nshare of users for whom each theme is the best (the oracle's choices):")
    for s, share in best_share.items():
        print(f"  seed {s}: " + ", ".join(f"theme {a} {p:.1%}" for a, p in zip(ARMS, share))
              + f"  (range {share.min():.0%}-{share.max():.0%})")

    alphas = (1.0, 0.3, 0.1, 0.05)
    sweep = {1.0: [r.regret[-1] for r in res["LinUCB (alpha=1)"]]}
    for s, model in models.items():
        for a in alphas[1:]:
            sweep.setdefault(a, []).append(
                simulate(LinUCB(ARMS, d, alpha=a, seed=s), n, s, model).regret[-1])
    print(f"\nLinUCB alpha sweep, regret@{n // 1000}k, mean of seeds {seeds}: "
          + ", ".join(f"alpha={a:g}: {np.mean(sweep[a]):.0f}" for a in alphas))
    _plot(res, n, seeds, out)


def bench_unit_test_setting():
    """The regret test of tests/core/test_bandit.py: fast model, 3,000 impressions, seeds 0-3."""
    n = 3000
    print(f"\n## Unit-test setting: ClickModel.fast, n={n:,}, LinUCB (alpha=1) regret ratios")
    print("| seed | LinUCB / random | LinUCB / UCB1 |")
    print("|------|-----------------|---------------|")
    ratios = []
    for seed in range(4):
        model = ClickModel.fast(seed=seed)
        arms, d = model.arms, model.schema.dim
        lin = simulate(LinUCB(arms, d, alpha=1.0, seed=seed), n, seed, model).regret[-1]
        rnd = simulate(RandomPolicy(arms, seed=seed), n, seed, model).regret[-1]
        ucb = simulate(UCB1(arms, seed=seed), n, seed, model).regret[-1]
        ratios += [lin / rnd, lin / ucb]
        print(f"| {seed:4d} | {lin / rnd:15.3f} | {lin / ucb:13.3f} |")
    print(f"ratios range {min(ratios):.2f}-{max(ratios):.2f} (tests/core/test_bandit.py asks < 0.35)")


def _k(v, _pos=None):
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"


def _plot(res, n, seeds, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    styles = {
        "random": ("tab:gray", "-"), "UCB1 (c=sqrt 2)": ("tab:orange", "-"),
        "best fixed theme": ("tab:brown", ":"), "LinUCB (alpha=1)": ("tab:blue", "-"),
        "LinUCB, 4 replicas": ("tab:cyan", "--"), "oracle": ("black", "--"),
    }
    t = np.arange(1, n + 1)
    start = min(2000, n // 10)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110)
    for name, rs in res.items():
        col, ls = styles[name]
        ctr = np.mean([r.expected for r in rs], axis=0) / t * 100
        reg = np.mean([r.regret for r in rs], axis=0)
        ax1.plot(t[start:], ctr[start:], color=col, ls=ls, lw=2, label=name)
        ax2.plot(t, reg, color=col, ls=ls, lw=2, label=name)
    ax1.set_title("Cumulative CTR (true CTR of the themes shown)")
    ax1.set_xlabel("impressions")
    ax1.set_ylabel("expected clicks / impressions (%), from 2k on")
    ax1.set_xscale("log")
    ax1.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_k))
    ax1.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_k))
    ax2.set_title("Cumulative regret vs the oracle")
    ax2.set_xlabel("impressions")
    ax2.set_ylabel("expected clicks lost")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(loc="upper left", fontsize=9)
    fig.suptitle(f"Theme bandits on a simulated click model: 3 themes, d=34 one-hot context, "
                 f"mean of {len(seeds)} seed(s)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"\nplot: {out}")


def bench_ope(quick):
    from bggen_assets.core.bandit_simulation import log_traffic
    from bggen_assets.core.ope import estimate_all, fit_reward_model, replay_probabilities

    n, eps = (10_000, 0.1) if quick else (50_000, 0.1)
    seeds = (0, 1) if quick else (0, 1, 2, 3, 4)
    schema = default_schema()
    model = ClickModel.synthetic(schema, ARMS, seed=0)
    t0 = time.perf_counter()
    res: dict[str, list] = {}
    for seed in seeds:
        data, C = log_traffic(LinUCB(ARMS, schema.dim, alpha=0.3, seed=seed), n, eps, seed=seed, model=model)
        q = fit_reward_model(data)
        best = np.zeros_like(C)
        best[np.arange(n), C.argmax(axis=1)] = 1.0
        fixed = np.zeros_like(C)
        fixed[:, int(C.mean(axis=0).argmax())] = 1.0
        cands = {"oracle (known best)": best, "best fixed theme": fixed,
                 "random": replay_probabilities(RandomPolicy(ARMS), data),
                 "ucb1 c=0.2": replay_probabilities(UCB1(ARMS, c=0.2), data, 0.05),
                 "linucb alpha=0.1": replay_probabilities(LinUCB(ARMS, schema.dim, alpha=0.1, seed=1), data, 0.05),
                 "linucb alpha=2": replay_probabilities(LinUCB(ARMS, schema.dim, alpha=2.0, seed=1), data, 0.05)}
        for name, pi in cands.items():
            true = float((pi * C).sum(axis=1).mean())
            e = estimate_all(data, pi, q, n_boot=200, seed=seed)
            res.setdefault(name, []).append((true, e, float(data.rewards.mean())))
    print(f"\n## Off-policy evaluation: logs of LinUCB (alpha=0.3) with epsilon={eps}, {n:,} impressions per seed, "
          f"seeds {list(seeds)}, realistic click model")
    print("true = the candidate's mean true CTR on the logged users; err = estimate - true (CTR percentage "
          "points, mean over seeds, and mean |err|); covered = seeds whose 95% bootstrap interval "
          "(200 resamples) contains the true CTR")
    print("| candidate | true CTR | IPS err (mean abs) | SNIPS err (mean abs) | DR err (mean abs) | DR interval width "
          "| IPS covered | DR covered |")
    print("|---|---:|---:|---:|---:|---:|:---:|:---:|")
    cov_all = tot = 0
    for name, rows in res.items():
        def err(k):
            es = [(e[k].value - t) * 100 for t, e, _ in rows]
            return f"{np.mean(es):+.3f} ({np.mean(np.abs(es)):.3f})"

        cov = {k: sum(e[k].lo <= t <= e[k].hi for t, e, _ in rows) for k in ("ips", "dr")}
        cov_all += cov["dr"]
        tot += len(rows)
        width = np.mean([(e["dr"].hi - e["dr"].lo) * 100 for _, e, _ in rows])
        print(f"| {name} | {np.mean([t for t, _, _ in rows]) * 100:.3f}% | {err('ips')} | {err('snips')} | {err('dr')} "
              f"| {width:.3f} | {cov['ips']}/{len(rows)} | {cov['dr']}/{len(rows)} |")
    logged = np.mean([lc for rows in res.values() for _, _, lc in rows[:1]]) * 100
    print(f"DR's 95% interval covers the true CTR in {cov_all}/{tot} (candidate, seed) pairs; observed CTR of the "
          f"logging policy (seed {seeds[0]}): {logged:.3f}%; {time.perf_counter() - t0:.0f} s")


def _event_batches(doc, n_batches, size, seed=0):
    rng = np.random.default_rng(seed)
    products = sorted(doc.products)
    now = time.time() - 3600
    batches, k = [], 0
    for _ in range(n_batches):
        batch = []
        while len(batch) < size:
            eid = f"bench-{seed}-{k}"
            k += 1
            batch.append({"type": "impression", "id": eid, "ts": now, "merchant": "northwind",
                          "product": products[k % len(products)], "width": 300, "height": 250, "variant": "bandit",
                          "theme": doc.prompts[int(rng.integers(len(doc.prompts)))], "propensity": 0.5,
                          "context": {"country": ["us", "de", "gb"][k % 3], "device": ["mobile", "desktop"][k % 2]}})
            if rng.random() < 0.03 and len(batch) < size:
                batch.append({"type": "click", "id": f"c-{eid}", "impression_id": eid, "ts": now + 5})
        batches.append(batch)
    return batches


def bench_ingest(quick, data_dir):
    import json
    import socket
    import tempfile
    import threading

    import httpx
    import uvicorn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serving import build_world, resources  # benchmarks/serving.py: the same world

    from bggen_assets.assets.ad_events import import_day
    from bggen_assets.core import serving_index
    from bggen_assets.serving.api import create_app
    from bggen_assets.serving.personalize import ServingConfig
    from resources.bandit_store import BanditStore
    from resources.metadata_db import MetadataDB
    from resources.miss_queue import DbMissQueue

    build_world(data_dir)
    store, _, _, cc = resources(data_dir)
    doc = serving_index.read_document(store, serving_index.read_pointer(store, "northwind", "footwear"))
    n_batches = 5 if quick else 20
    tmp = Path(tempfile.mkdtemp(prefix="bggen-ingest-"))
    db = MetadataDB(url=f"sqlite:///{tmp / 'events.db'}")
    bs = BanditStore(metadata_db=db)
    app = create_app(store, DbMissQueue(metadata_db=db), bs, cc, ServingConfig(variant_shares={"bandit": 1.0}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.01)
    batches = _event_batches(doc, n_batches, 1000)
    bodies = [json.dumps(b).encode() for b in batches]
    with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=120) as client:
        client.post("/events", content=json.dumps(_event_batches(doc, 1, 1000, seed=9)[0]).encode())  # warm-up
        t0 = time.perf_counter()
        for body in bodies:
            r = client.post("/events", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
        dt = time.perf_counter() - t0
        dup0 = time.perf_counter()
        r = client.post("/events", content=bodies[0])
        dup_dt = time.perf_counter() - dup0
        assert r.json()["duplicates"] == 1000, r.json()
    server.should_exit = True
    th.join(timeout=20)
    n_events = sum(len(b) for b in batches)
    print(f"\n## Events in (SQLite, one uvicorn worker, world of benchmarks/serving.py)")
    print("| path | events | seconds | events/s |")
    print("|---|---:|---:|---:|")
    print(f"| POST /events, {n_batches} batches of 1,000 (new) | {n_events:,} | {dt:.2f} | {n_events / dt:,.0f} |")
    print(f"| POST /events, a batch of 1,000 sent again (duplicates) | 1,000 | {dup_dt:.2f} | {1000 / dup_dt:,.0f} |")
    # the import asset's body on files in the object store: half JSON lines, half Parquet
    import io

    import pandas as pd

    day = time.strftime("%Y-%m-%d", time.gmtime())
    db2 = MetadataDB(url=f"sqlite:///{tmp / 'import.db'}")
    files = _event_batches(doc, n_batches, 1000, seed=1)
    for i, b in enumerate(files):
        if i % 2:
            flat = [{**{k: v for k, v in e.items() if k != "context"},
                     **{f"context_{k}": v for k, v in e.get("context", {}).items()}} for e in b]
            buf = io.BytesIO()
            pd.DataFrame(flat).to_parquet(buf, index=False)
            store.put_bytes(f"events/incoming/{day}/bench-{i:03d}.parquet", buf.getvalue())
        else:
            store.put_bytes(f"events/incoming/{day}/bench-{i:03d}.jsonl", "\n".join(json.dumps(e) for e in b).encode())
    t0 = time.perf_counter()
    out = import_day(store, BanditStore(metadata_db=db2), day)
    dt = time.perf_counter() - t0
    for key in list(store.list_keys(f"events/incoming/{day}/")):
        store.delete(key)
    t = out["totals"]
    assert t["rejected"] == 0, out["rejected_sample"]
    print(f"| ad_events import, {n_batches} files (JSONL + Parquet) | {t['received']:,} | {dt:.2f} | "
          f"{t['received'] / dt:,.0f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run")
    ap.add_argument("--out", type=Path, default=Path("bggen_data/bench/bandit.png"), help="plot PNG path")
    ap.add_argument("--data", type=Path, default=Path("bggen_data/bench/serving"),
                    help="the world of benchmarks/serving.py (built there if missing) for the events-in rows")
    ap.add_argument("--only", choices=["throughput", "simulation", "unit", "ope", "ingest"], action="append",
                    help="run only these sections (repeatable)")
    args = ap.parse_args(argv)
    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {cpu})
    print(f"# bandit benchmark  python {platform.python_version()}, numpy {np.__version__}, "
          f"pinned to cpu {cpu}, BLAS threads 1, {'quick' if args.quick else 'full'} run")
    only = set(args.only or ["throughput", "simulation", "unit", "ope", "ingest"])
    if "throughput" in only:
        bench_throughput(args.quick)
    if "simulation" in only:
        bench_simulation(args.quick, args.out)
    if "unit" in only:
        bench_unit_test_setting()
    if "ope" in only:
        bench_ope(args.quick)
    if "ingest" in only:
        if hasattr(os, "sched_setaffinity"):  # the server thread and the client share the process
            os.sched_setaffinity(0, set(range(os.cpu_count())))
        bench_ingest(args.quick, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
