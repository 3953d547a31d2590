#!/usr/bin/env python3
"""Train, validate and calibrate the router's difficulty estimate (switchboard/router/difficulty.py).

    .venv/bin/python scripts/train_difficulty.py              # the whole job, one command (minutes)
    .venv/bin/python scripts/train_difficulty.py --benchmark  # score() latency over the data's prompts

Reads ``../shared/data/router-mix`` and ``../shared/data/routellm-mmlu`` in place (``--data``), then:

1. **Content regression, held out**: a logistic regression over ``difficulty_features.features``
   fitted on MMLU (14,000 questions of 57 subjects, one model pair: which kinds of questions
   separate the cheap model from the strong one), so every other source is scored by a fit that
   saw none of its rows; MMLU itself is scored by five fits that each leave a fifth of its subjects
   out (``CONTENT_SOURCE``, ``SUBJECT_FOLDS``). Trained on all sources at once (one intercept per
   source), the regression learnt what makes each benchmark hard and lost to length everywhere
   held out; the one-source fit transfers better (docs/routing.md).
2. **Quantities**: for maths and word problems (``difficulty_features.quantity``) the logit is
   prompt length plus ``QUANTITY_WEIGHT`` times their log count of quantities less that of
   ``QUANTITY_CENTRE`` (over its spread), and not the regression (whose words say little about
   which of two word problems is harder).
3. **Blend**: every other prompt gets ``z(length) + blend * z(regression)`` (length divided by its
   spread over all prompts; the regression centred and divided by its spread over those prompts).
   ``blend`` is chosen on the held-out predictions: the largest mean APGR over the sources among
   the blends that lose to prompt length on no source by more than ``TOLERANCE``. Each source's
   APGR and CPT(50%)/CPT(80%) are reported beside random routing and prompt length alone (longer
   = harder), with a bootstrap interval of the difference to length.
4. **Calibration** (Platt scaling) on the held-out logits against the label, every source
   weighing the same, so that the served number is a probability on kinds of prompts the
   regression had not seen; reported per source with a calibration fitted without that source.
5. **Training for real** and writing the weights (with the calibration, the held-out figures and
   the configuration in their metadata) and docs/routing-results.json, including the share of
   prompts each difficulty tier receives under the configured thresholds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path

# One BLAS thread: the fit is a long run of small vector operations, which OpenBLAS's threads only
# slow down (ten times on a shared two-core machine). Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
for p in (REPO_ROOT, Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import difficulty_data as data  # noqa: E402
import difficulty_fit as fitting  # noqa: E402
import difficulty_metrics as metrics  # noqa: E402

from switchboard.core.config import RoutingConfig  # noqa: E402
from switchboard.router import difficulty as D  # noqa: E402
from switchboard.router import difficulty_features as F  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_REPORT = REPO_ROOT / "docs" / "routing-results.json"
# The content regression reads the 49 structure features (and their bins), not hashed words: held
# out (512 + 1,024-byte window), structure alone let the blend rule allow 0.25 with mean APGR
# 0.5493, words and structure together 0.1 with 0.5472 (words alone lost 0.009 at 0.1); and the
# prompt is not hashed at run time (about 40 us a decision).
CONFIG = fitting.FitConfig(hashed=False)
BLENDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)
QUANTITY_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)  # reported, not chosen
# The quantity term's weight. Held out, the mean APGR is flat from 0.25 to 0.75 (the table in
# docs/routing.md); at 4 (chosen by that mean before) the count of numbers outweighed everything
# else, so that a maths question with three numbers ranked below small talk of the same length.
# 0.5: going from 3 to 6 quantities raises a word problem about half as much as doubling its length.
QUANTITY_WEIGHT = 0.5
# Where the quantity term is zero: at two quantities, the fewest a word problem has, so that each
# further quantity makes a maths or word problem harder than an ordinary prompt of its length and
# none is rated easier (maths with a single number, a little; maths with none takes the content
# term). Centred on the mean count instead (3.7), a short problem ranked below small talk; centred
# at one quantity, held out, MMLU and TheoremQA fell 0.021 and 0.014 below length.
QUANTITY_CENTRE = 2
CONTENT_SOURCE = data.MMLU_SOURCE  # the content regression's training source (one model pair, 57 subjects)
SUBJECT_FOLDS = 5
PREVIOUS_THRESHOLDS = (0.25, 0.41)  # difficulty_mid, difficulty_flagship before the calibrated estimate
TOLERANCE = 0.005  # a blend may lose this much APGR to prompt length on a source (well inside the noise)
LABEL = "weak_fails_strong_succeeds"
LABEL_DEFINITION = ("(1 - weak outcome) * strong outcome: 1 when the weak model fails and the strong one "
                    "succeeds; graded outcomes read as success probabilities")
SCORE_MEANING = "P(the cheap model fails and a strong model succeeds)"


def length_signal(prompts: list[str]) -> np.ndarray:
    """Prompt length alone, the baseline every held-out source is compared with: log UTF-8 bytes."""
    return np.log1p([len(p.encode("utf-8", "replace")) for p in prompts])


def content_held_out(ds: data.Dataset, X: fitting.Matrix, cfg: fitting.FitConfig,
                     verbose: bool = True) -> tuple[np.ndarray, fitting.Params]:
    """(held-out content logits, the fit that ships). Every source but CONTENT_SOURCE is scored by
    the fit on CONTENT_SOURCE, which saw none of its rows; CONTENT_SOURCE itself by SUBJECT_FOLDS
    fits that each leave a share of its subjects out (subjects never trained on, such as
    high_school_mathematics, by the shipped fit)."""
    y, trainable = ds.label(), ds.trainable()
    own = ds.sources == CONTENT_SOURCE
    t0 = time.perf_counter()
    shipped = fitting.fit(X.take(own & trainable), y[own & trainable], ds.sources[own & trainable], cfg)
    out = shipped.logits(X)  # right for every row the shipped fit was not trained on
    subjects = np.unique(ds.groups[own & trainable])
    if len(subjects) < 2:
        raise ValueError(f"{CONTENT_SOURCE} needs two trainable subjects or more to be scored held out")
    np.random.default_rng(0).shuffle(subjects)
    folds = min(SUBJECT_FOLDS, len(subjects))
    for k in range(folds):
        held = own & np.isin(ds.groups, subjects[k::folds])
        train = own & trainable & ~held
        out[held] = fitting.fit(X.take(train), y[train], ds.sources[train], cfg).logits(X.take(held))
    if verbose:
        print(f"  content regression: {int((own & trainable).sum())} {CONTENT_SOURCE} rows, "
              f"{folds} subject folds, {time.perf_counter() - t0:.0f}s", flush=True)
    return out, shipped


def per_source(ds: data.Dataset, scores: np.ndarray) -> dict[str, float]:
    return {s: metrics.apgr(scores[ds.sources == s], ds.weak[ds.sources == s], ds.strong[ds.sources == s])
            for s in np.unique(ds.sources)}


def served_logit(z_len: np.ndarray, z_model: np.ndarray, zq: np.ndarray, quantitative: np.ndarray,
                 blend: float, weight: float) -> np.ndarray:
    """What DifficultyModel.logit computes: length plus the quantity term for maths and word
    problems, length plus blend x the content regression for the rest."""
    return z_len + np.where(quantitative, weight * zq, blend * z_model)


def choose_blend(ds: data.Dataset, z_len: np.ndarray, z_model: np.ndarray, zq: np.ndarray,
                 quantitative: np.ndarray) -> tuple[float, list[dict]]:
    """The blend with the best mean held-out APGR among those that lose to length on no source by
    more than TOLERANCE (ties: the smaller blend)."""
    base = per_source(ds, z_len)
    table, best = [], (-1.0, 0.0)
    for blend in BLENDS:
        apgrs = per_source(ds, served_logit(z_len, z_model, zq, quantitative, blend, QUANTITY_WEIGHT))
        worst = min(apgrs[s] - base[s] for s in base)
        mean = per_source_mean(apgrs)
        table.append({"blend": blend, "mean_apgr": round(mean, 4), "worst_margin_vs_length": round(worst, 4),
                      "apgr": {s: round(v, 4) for s, v in apgrs.items()}})
        if worst >= -TOLERANCE and mean > best[0] + 1e-9:
            best = (mean, blend)
    if best[0] < 0:
        print(f"warning: no blend loses at most {TOLERANCE} to length on every source; blend 0 "
              f"(worst source at blend 0: {table[0]['worst_margin_vs_length']:+.4f})", file=sys.stderr)
    return best[1], table


def per_source_mean(apgrs: dict[str, float]) -> float:
    return float(np.mean(list(apgrs.values())))


def quantity_signal(prompts: list[str]) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(signal, applies, centre, spread): ``F.quantity`` of each prompt less QUANTITY_CENTRE's,
    divided by its spread over the prompts it applies to (0 for the others), and where it applies."""
    q = np.array([np.nan if (v := F.quantity(p)) is None else v for p in prompts], dtype=np.float64)
    on = ~np.isnan(q)
    centre = math.log1p(QUANTITY_CENTRE)
    if not on.any():
        return np.zeros(len(prompts)), on, centre, 1.0
    spread = float(q[on].std()) or 1.0
    return np.where(on, (q - centre) / spread, 0.0), on, centre, spread


def quantity_table(ds: data.Dataset, z_len: np.ndarray, z_model: np.ndarray, zq: np.ndarray,
                   quantitative: np.ndarray, blend: float) -> list[dict]:
    """Held-out APGR by quantity weight at the chosen blend: how flat the choice is."""
    rows = []
    for w in QUANTITY_WEIGHTS:
        a = per_source(ds, served_logit(z_len, z_model, zq, quantitative, blend, w))
        rows.append({"weight": w, "mean_apgr": round(per_source_mean(a), 4),
                     "apgr": {s: round(v, 4) for s, v in a.items()}})
    return rows


def held_out_report(ds: data.Dataset, served_logit: np.ndarray, z_len: np.ndarray) -> tuple[dict, tuple[float, float]]:
    """Per source: routing beside random and length, and calibration with a Platt scaling fitted
    on the other sources' held-out logits. Returns (report, Platt scaling fitted on all sources)."""
    y = ds.label()
    sw = fitting.source_weights(ds.sources, 1.0)
    report: dict = {}
    for source in np.unique(ds.sources):
        m = ds.sources == source
        w, s = ds.weak[m], ds.strong[m]
        slope, offset = metrics.platt(served_logit[~m], y[~m], sw[~m])
        prob = D.calibrate(served_logit[m], slope, offset)
        router, length = metrics.routing_metrics(served_logit[m], w, s), metrics.routing_metrics(z_len[m], w, s)
        report[source] = {
            "rows": int(m.sum()), "weak": round(float(w.mean()), 4), "strong": round(float(s.mean()), 4),
            "router": router, "length": {k: length[k] for k in ("apgr", "cpt50", "cpt80")},
            "random": {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8},
            "router_minus_length_apgr_90pct": metrics.apgr_interval(served_logit[m], z_len[m], w, s),
            "auc_label": metrics.auc(served_logit[m], y[m] >= 0.5),
            "calibration": metrics.calibration_report(prob, y[m], bins=5),
        }
    return report, metrics.platt(served_logit, y, sw)


def tier_shares(scores: np.ndarray, sources: np.ndarray, mid: float, flagship: float) -> dict:
    """Share of prompts whose difficulty alone asks for each tier (before the task's minimum tier
    and the plan's cap), over all prompts and per source."""
    def shares(x: np.ndarray) -> dict[str, float]:
        return {"small": round(float(np.mean(x < mid)), 4),
                "mid": round(float(np.mean((x >= mid) & (x < flagship))), 4),
                "flagship": round(float(np.mean(x >= flagship)), 4)}

    return {"thresholds": {"difficulty_mid": mid, "difficulty_flagship": flagship}, "all": shares(scores),
            "per_source": {s: shares(scores[sources == s]) for s in np.unique(sources)}}


def blended_params(params: fitting.Params, blend: float, len_sd: float, model_mean: float, model_sd: float,
                   length_range: tuple[float, float]) -> fitting.Params:
    """The served regression: z(length) + blend * (model - model_mean) / model_sd, folded into one
    set of weights, with length clipped to ``length_range`` (that of all the training prompts, which
    the held-out figures were computed on; the content fit saw one source's)."""
    k = blend / model_sd
    dense = params.dense * k
    dense[fitting.LENGTH_FEATURE] += 1.0 / len_sd
    lo, hi = params.lo.copy(), params.hi.copy()
    lo[fitting.LENGTH_FEATURE], hi[fitting.LENGTH_FEATURE] = length_range
    return fitting.Params(params.hashed * k, dense, params.bin_edges, params.bin_weights * k, params.fill,
                          lo, hi, (params.intercept - model_mean) * k)


def feature_config(cfg: fitting.FitConfig) -> dict:
    return {
        "feature_version": F.FEATURE_VERSION, "hash_bits": F.HASH_BITS, "head_bytes": F.HEAD_BYTES,
        "tail_bytes": F.TAIL_BYTES, "dense_bin_edges": D.N_BIN_EDGES, "dense_names": list(F.DENSE_NAMES),
        "fit": cfg.__dict__,
    }


def save_weights(path: Path, params: fitting.Params, slope: float, offset: float, meta: dict,
                 quantity: tuple[float, float, float] = (0.0, 0.0, 1.0), length_weight: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez_compressed(
            fh, hashed_weights=params.hashed.astype(np.float32), dense_weights=params.dense.astype(np.float64),
            bin_edges=params.bin_edges.astype(np.float64), bin_weights=params.bin_weights.astype(np.float64),
            dense_fill=params.fill, dense_lo=params.lo, dense_hi=params.hi, intercept=np.float64(params.intercept),
            calibration_slope=np.float64(slope), calibration_offset=np.float64(offset),
            quantity=np.array(quantity, dtype=np.float64), length_weight=np.float64(length_weight),
            metadata=np.array(json.dumps(meta, sort_keys=True)),
        )


def run(data_dir: Path, out: Path, report_path: Path, cfg: fitting.FitConfig = CONFIG, verbose: bool = True) -> dict:
    t0 = time.perf_counter()
    ds, stats = data.load(data_dir)
    X = fitting.featurize(ds.prompts)
    if verbose:
        print(f"{len(ds)} rows from {len(stats['sources'])} sources; features in {time.perf_counter() - t0:.0f}s",
              flush=True)
    length = length_signal(ds.prompts)
    model, params = content_held_out(ds, X, cfg, verbose)
    zq, quantitative, q_centre, q_spread = quantity_signal(ds.prompts)
    # The content term's statistics over the prompts it applies to.
    rest = ~quantitative
    len_sd, model_mean, model_sd = float(length.std()), float(model[rest].mean()), float(model[rest].std()) or 1.0
    # The content term is centred: it moves a prompt up or down from the average, where uncentred
    # it moved every prompt it applies to by an offset nobody chose (about -0.4 in logit, set by
    # the content fit's intercept) against maths and word problems.
    z_len, z_model = length / len_sd, (model - model_mean) / model_sd
    blend, blends = choose_blend(ds, z_len, z_model, zq, quantitative)
    served = served_logit(z_len, z_model, zq, quantitative, blend, QUANTITY_WEIGHT)
    quantities = {"weight": QUANTITY_WEIGHT, "centre": round(q_centre, 6), "spread": round(q_spread, 6),
                  "share_applied": {s: round(float(quantitative[ds.sources == s].mean()), 4)
                                    for s in np.unique(ds.sources)},
                  "weights": quantity_table(ds, z_len, z_model, zq, quantitative, blend)}
    per, (slope, offset) = held_out_report(ds, served, z_len)

    final = blended_params(params, blend, len_sd, model_mean, model_sd, (float(length.min()), float(length.max())))
    shipped = D.calibrate(np.where(quantitative, z_len + QUANTITY_WEIGHT * zq, final.logits(X)), slope, offset)
    routing = RoutingConfig()
    report = {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "scripts/train_difficulty.py",
        "data": stats,
        "label": LABEL, "label_definition": LABEL_DEFINITION, "score_meaning": SCORE_MEANING,
        "protocol": {
            "held_out": "leave one source out: each source scored by a fit without any of its rows",
            "baselines": "random routing (APGR 0.5, CPT(x) = x) and prompt length alone (log bytes, longer = harder)",
            "content": f"regression fitted on {CONTENT_SOURCE} only; {CONTENT_SOURCE} itself scored by "
                       f"{SUBJECT_FOLDS} fits leaving a fifth of its subjects out",
            "blend": f"served logit = z(length) + blend * z(regression) for prompts the quantity term does not "
                     f"apply to; blend chosen on the held-out predictions (best mean APGR among blends losing "
                     f"at most {TOLERANCE} to length on every source)",
            "quantity": f"maths and word problems: served logit = z(length) + {QUANTITY_WEIGHT} * (log(1 + "
                        f"quantities) - log(1 + {QUANTITY_CENTRE})) / spread (fixed weight and centre; the table "
                        f"by weight is reported)",
            "calibration": "Platt scaling on held-out logits, sources weighted equally; per-source figures use a "
                           "scaling fitted without that source",
            "interval": "90% bootstrap interval (rows resampled) of router APGR minus length APGR",
        },
        "model": feature_config(cfg),
        "blend": blend, "blends": blends, "quantity": quantities,
        "content": {"source": CONTENT_SOURCE, "mean": round(model_mean, 6), "spread": round(model_sd, 6)},
        "calibration": {"slope": round(slope, 5), "offset": round(offset, 5)},
        "mean_apgr": {"router": round(per_source_mean({s: r["router"]["apgr"] for s, r in per.items()}), 4),
                      "length": round(per_source_mean({s: r["length"]["apgr"] for s, r in per.items()}), 4)},
        "sources": per,
        "tiers": tier_shares(shipped, ds.sources, routing.difficulty_mid, routing.difficulty_flagship),
        # The thresholds before calibration (0.25, 0.41: quantiles of the MMLU-only estimate), applied
        # to this estimate: why they moved.
        "tiers_at_previous_thresholds": tier_shares(shipped, ds.sources, *PREVIOUS_THRESHOLDS),
        "score_quantiles": {f"{q:.2f}": round(float(np.quantile(shipped, q)), 4) for q in np.linspace(0, 1, 11)},
    }
    meta = {
        "trained": report["generated"], "data": stats, "label": LABEL, "label_definition": LABEL_DEFINITION,
        "score_meaning": SCORE_MEANING, "blend": blend, **feature_config(cfg),
        "quantity": {"weight": QUANTITY_WEIGHT, "centre": q_centre, "spread": q_spread},
        "content_source": CONTENT_SOURCE,
        "held_out": {s: {"apgr": r["router"]["apgr"], "length_apgr": r["length"]["apgr"],
                         "ece": r["calibration"]["ece"]} for s, r in per.items()},
    }
    save_weights(out, final, slope, offset, meta, (QUANTITY_WEIGHT, q_centre, q_spread), 1.0 / len_sd)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if verbose:
        print_summary(report)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {report_path}; "
              f"{time.perf_counter() - t0:.0f}s in all")
    return report


def print_summary(report: dict) -> None:
    q = report["quantity"]
    print(f"quantity weight {q['weight']}; by weight: "
          + ", ".join(f"{r['weight']}: {r['mean_apgr']}" for r in q["weights"]))
    print(f"blend {report['blend']}; calibration slope {report['calibration']['slope']} "
          f"offset {report['calibration']['offset']}")
    print("| held-out source | rows | weak | strong | router APGR | length APGR | router - length (90%) | "
          "router CPT(50%) / CPT(80%) | length CPT(50%) / CPT(80%) | mean predicted / observed | ECE |")
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for s, r in report["sources"].items():
        lo, hi = r["router_minus_length_apgr_90pct"]
        c = r["calibration"]
        print(f"| {s} | {r['rows']} | {r['weak']:.3f} | {r['strong']:.3f} | {r['router']['apgr']:.3f} | "
              f"{r['length']['apgr']:.3f} | {r['router']['apgr'] - r['length']['apgr']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
              f"{pct(r['router']['cpt50'])} / {pct(r['router']['cpt80'])} | {pct(r['length']['cpt50'])} / "
              f"{pct(r['length']['cpt80'])} | {c['mean_predicted']:.3f} / {c['mean_observed']:.3f} | {c['ece']:.3f} |")
    print("tiers:", json.dumps(report["tiers"]["all"]))


def benchmark(data_dir: Path, weights: Path, repeats: int = 2) -> int:
    """Per-call latency of DifficultyModel.score over the data's prompts plus some very long ones."""
    ds, _ = data.load(data_dir)
    t0 = time.perf_counter()
    model = D.DifficultyModel.load(weights)
    print(f"load {(time.perf_counter() - t0) * 1e3:.1f} ms; {repeats} passes, last reported")
    long_prompts = [(ds.prompts[i % len(ds)] + " ") * reps for i, reps in enumerate((10, 30, 100) * 20)]
    clock = time.perf_counter_ns
    for name, prompts in {"all prompts": ds.prompts, "long prompts": long_prompts}.items():
        times = np.empty(len(prompts))
        for _ in range(repeats):
            for i, p in enumerate(prompts):
                t = clock()
                model.score(p)
                times[i] = clock() - t
        us = times / 1e3
        chars = np.array([len(p) for p in prompts])
        print(f"{name}: n={len(prompts)} chars p50 {np.median(chars):.0f} max {chars.max()}; score() us: "
              f"p50 {np.percentile(us, 50):.0f} p90 {np.percentile(us, 90):.0f} p99 {np.percentile(us, 99):.0f} "
              f"max {us.max():.0f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help=f"folder holding router-mix/ and routellm-mmlu/ (default {DEFAULT_DATA})")
    ap.add_argument("--out", type=Path, default=D.DEFAULT_WEIGHTS, help="weights file to write")
    ap.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="evaluation JSON to write")
    ap.add_argument("--benchmark", action="store_true", help="time DifficultyModel.score (pin to one core with taskset)")
    ap.add_argument("--max-iter", type=int, default=CONFIG.max_iter, help="L-BFGS iterations per fit")
    args = ap.parse_args(argv)
    if args.benchmark:
        return benchmark(args.data, args.out)
    run(args.data, args.out, args.report, dataclasses.replace(CONFIG, max_iter=args.max_iter))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
