"""``medalign`` command line: ``medalign data build|validate|bench-render ...``.

Each sub-command is a thin wrapper over a library function, so everything it does can also
be done from a notebook.
"""
from __future__ import annotations

import argparse
import os
import sys


class UsageError(Exception):
    """A command line that cannot work (exit 2, before anything is done)."""


def _os_error_line(e: OSError) -> str:
    """``<path>: <reason>`` for an OSError that names its path, else its own message."""
    if e.filename is None:
        return str(e)
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
    reason = e.strerror or str(e)
    if isinstance(e, (FileExistsError, NotADirectoryError)) and os.path.isfile(e.filename):
        reason += " (a file, where a folder is needed)"  # mkdir's answer for a path through a file
    return f"{where}: {reason}"


def _check_out_folder(out: str) -> None:
    """``--out`` must be a folder or not exist yet (nor may any folder above it be a file)."""
    from pathlib import Path

    p = Path(out).expanduser()
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                what = "is a file" if q == p else f"cannot be made: {q} is a file"
                raise UsageError(f"--out {out}: {what}, not a folder")
            return


def _data_build(args: argparse.Namespace) -> int:
    from .data.builders import get_builder

    _check_out_folder(args.out)
    build = get_builder(args.name)
    extra = {"workers": args.workers}
    if args.reports_root:
        if args.name != "mimic-cxr":
            raise ValueError("--reports-root applies to mimic-cxr only")
        extra["reports_root"] = args.reports_root
    path = build(args.out, root=args.root, size=args.size, limit=args.limit, seed=args.seed,
                 progress=not args.quiet, **extra)
    print(path)
    return 0


def _data_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.manifest import check_manifest

    if args.deep and args.no_files:
        raise UsageError("--deep opens the files; it cannot go with --no-files")
    path = Path(args.manifest)
    problems = check_manifest(path, check_files=not args.no_files, deep=args.deep,
                              allow_absolute=args.allow_absolute, workers=args.workers)
    if problems:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{path}: OK")
    return 0


def _data_bench_render(args: argparse.Namespace) -> int:
    from .data.phantom import bench_render

    if hasattr(os, "sched_setaffinity"):  # one core, as the target says
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rate = bench_render(n=args.n, size=args.size, view=args.view)
    print(f"{rate:.0f} images/s ({args.view} {args.size}x{args.size}, one core, {args.n} images)")
    return 0


def _label(args: argparse.Namespace) -> int:
    import time

    from .text.labeler import label_csv

    cols = [c.strip() for c in args.text_col.split(",")]
    t0 = time.perf_counter()
    out = label_csv(args.input, cols if len(cols) > 1 else cols[0], args.out)
    print(f"{out} ({time.perf_counter() - t0:.1f} s; rule-based CheXpert-style labeler, 1 / 0 / -1 / blank)")
    return 0


def _bench_gloria(args: argparse.Namespace) -> int:
    import json

    from .bench import bench_gloria

    sizes = tuple(int(x) for x in args.batch_sizes.split(","))
    res = bench_gloria(sizes, args.tokens, args.patches, args.dim, device=args.device,
                       dtype=args.dtype, repeats=args.repeats, chunk=args.chunk)
    print(f"GLoRIA local loss, forward + backward, {res['device']}, {res['dtype']}")
    print(f"{'B':>4} {'T':>4} {'P':>4} {'D':>4} {'seconds':>9} {'peak MiB':>9}")
    for pt in res["points"]:
        print(f"{pt['B']:>4} {pt['T']:>4} {pt['P']:>4} {pt['D']:>4} {pt['seconds']:>9.4f} {pt['peak_mib']:>9.1f}")
    print(f"time grows as B^{res['growth_exponent']}, memory as B^{res['memory_growth_exponent']} "
          f"(O(B^2*T*P*D) expected)")
    if args.json:
        print(json.dumps(res))
    return 0


def _bench_aga(args: argparse.Namespace) -> int:
    import json

    from .bench import bench_aga

    dims = tuple(int(x) for x in args.gloria_dims.split(",") if x.strip())
    dtypes = tuple(x.strip() for x in args.dtypes.split(",") if x.strip()) if args.dtypes else None
    res = bench_aga(args.batch_size, args.tokens, args.patches, args.dim, gloria_dims=dims,
                    device=args.device, dtypes=dtypes, repeats=args.repeats, vision=args.vision,
                    image_size=args.image_size, encoders=not args.no_encoders, encoder_batch=args.encoder_batch,
                    gloria_repeats=args.gloria_repeats, compile=args.compile)
    b = res["B"]
    print(f"AGA head vs encoders vs GLoRIA local loss, forward + backward, {res['device']}")
    print(f"B = {b}, T = {res['T']}, P = {res['P']}, d = {res['d']}; median of {res['repeats']} "
          f"(GLoRIA: {res['gloria_repeats']})")
    if b != 48:
        print(f"note: batch B = {b} (paper: 48); the ratios are measured at this B")

    def ms(sec: float) -> str:
        return f"{sec * 1e3:10.2f} ms"

    for dtype, r in res["by_dtype"].items():
        print(f"[{dtype}]")
        print(f"  AGA head alone (similarity, gates, IGA, BCGA, global), default: {ms(r['head_s'])}")
        for suffix, label in (("_eager", "eager (compile=never)"), ("_compiled", "compiled (compile=always)")):
            if f"head{suffix}_s" in r:
                print(f"  AGA head alone, {label}: {ms(r[f'head{suffix}_s'])}")
        if "encoders_s" in r:
            print(f"  encoders ({res['vision']} at {res['image_size']} px, P = {res['encoder_P']}; "
                  f"BERT-base shape, {res['text_layers']} layers, random), B = {b}: {ms(r['encoders_s'])}")
            if r["encoders_extrapolated"]:
                print(f"    scaled down: measured on {r['encoders_measured_B']} pairs and extrapolated per pair "
                      f"to B = {b} (a CPU runs the samples one after the other)")
        for suffix in ("", "_eager"):
            if f"step{suffix}_s" in r:
                print(f"  whole AGA step{suffix.replace('_', ', ')} (encoders + head): {ms(r[f'step{suffix}_s'])}"
                      f"  -> head adds {ms(r[f'head_in_step{suffix}_s'])}")
        for dim, sec in r["gloria_s"].items():
            print(f"  GLoRIA local loss, D = {dim}: {ms(sec)}")
        for key, what in (("head_share", "head / encoders"),
                          ("vs_gloria", f"head / GLoRIA(D = {dims[0] if dims else '-'})")):
            for variant in ("", "_in_step", "_eager", "_in_step_eager", "_compiled"):
                if key + variant in r:
                    print(f"  {key + variant} = {what} = {r[key + variant]:.4f} (target <= 0.05)")
        for k, v in r.items():
            if k.startswith("vs_gloria_d"):
                print(f"  {k} = head / GLoRIA(D = {k[len('vs_gloria_d'):].split('_')[0]}) = {v:.4f}")
    if args.json:
        print(json.dumps(res))
    return 0


def _bench_s2d_generate(args: argparse.Namespace) -> int:
    import json

    from .bench import bench_s2d_generate

    res = bench_s2d_generate(args.n_reports, args.batch_size, args.num_beams, args.max_new_tokens,
                             report_tokens=args.report_tokens or None, device=args.device, threads=args.threads,
                             config=args.config, prefill_once=not args.no_prefill, compare_plain=args.compare,
                             overrides=tuple(args.set), omp_wait_policy=args.omp_wait_policy or None,
                             processes=args.processes)
    print(f"S2D-ALIGN report generation ({res['config']}, random weights), {res['device']}")
    print(f"{res['n_reports']} reports, batch {res['batch_size']}, beam {res['num_beams']}, KV cache, "
          f"prompt {res['prompt_tokens']} tokens ({res['memory_size']} soft), reports forced to "
          f"{res['report_tokens']} tokens (max {res['max_new_tokens']}), prompt prefilled once: {res['prefill_once']}")
    print(f"  {res['reports_per_s']:.1f} reports/s, {res['tokens_per_s']:.0f} tokens/s, "
          f"{res['mean_generated_tokens']:.1f} tokens per report, {res['seconds']:.2f} s")
    if "prefill_speedup" in res:
        other = res.get("plain_reports_per_s", res.get("prefilled_reports_per_s"))
        print(f"  the other prompt path: {other:.1f} reports/s (prefill speed-up x{res['prefill_speedup']:.2f})")
    print(f"  CPU time {res['cpu_seconds']:.2f} s, {res['processes']} process(es) of {res['threads']} thread(s), "
          f"OMP_WAIT_POLICY="
          f"{res['omp_wait_policy'] or '(default)'}, load average before/after: {res['load_avg']}")
    if args.json:
        print(json.dumps(res))
    return 0


def _bench_exgramed(args: argparse.Namespace) -> int:
    import json

    from .bench import bench_exgramed

    res = bench_exgramed(device=args.device, repeats=args.repeats, batch_sizes=tuple(args.batch_sizes),
                         solver=args.solver, paper=not args.no_paper, threads=args.threads)
    t = res["tiny"]
    print(f"ExGra-Med aligner and text passes against the LM step ({res['device']}, solver {res['solver']})")
    print(f"  tiny (exgramed_tiny shapes, B = 16): LM step {t['seconds']['lm'] * 1000:.1f} ms, text passes "
          f"{t['seconds']['text'] * 1000:.1f} ms, aligner {t['seconds']['aligner'] * 1000:.1f} ms -> "
          f"aligner_share {t['aligner_share']:.3f}, text_pass_share {t['text_pass_share']:.3f}")
    if "paper" in res:
        p = res["paper"]
        print(f"  paper shapes (B = 16, d = 4096, 4096-wide GNN): aligner {p['aligner_seconds']:.3f} s measured; "
              f"LLaMA-7B step {p['lm_step_extrapolated']:.1f} s extrapolated from one 4096-wide layer "
              f"({p['layer_seconds']:.3f} s on 256 tokens) -> aligner_share {p['aligner_share']:.4f}, "
              f"text_pass_share {p['text_pass_share']:.3f}")
    for name, per_b in res["solver_ms"].items():
        print(f"  solver {name}, 6 matchings + 6 target solves: " +
              ", ".join(f"B={b}: {ms:.2f} ms" for b, ms in per_b.items()))
    print(f"  {res['threads']} thread(s), load average before/after: {res['load_avg']}")
    if args.json:
        print(json.dumps(res))
    return 0


def _bench_alta(args: argparse.Namespace) -> int:
    import json

    from .bench.alta import bench_alta

    res = bench_alta(args.batch_size, args.tokens, device=args.device, dtype=args.dtype, repeats=args.repeats,
                     config=args.config, threads=args.threads, steps=not args.no_steps)
    print(f"ALTA efficiency at {res['config']} shapes (random weights, nothing downloaded), {res['device']}, "
          f"{res['dtype']}")
    print(f"trainable: {res['trainable_params'] / 1e6:.2f} M of {res['params'] / 1e6:.1f} M parameters = "
          f"{100 * res['trainable_fraction']:.2f} % (paper: about 8 %)")
    for group, row in res["groups"].items():
        print(f"  {group:<50} {row['params'] / 1e6:9.3f} M  trainable {row['trainable'] / 1e6:9.3f} M")
    if "step_ratio" in res:
        if res["B"] != 24:
            print(f"note: batch scaled down to B = {res['B']} (paper: 24 per GPU); the ratios are measured at this B")
        print(f"one training step, B = {res['B']}, T = {res['T']}, four views at {res['image_size']} px, median of "
              f"{args.repeats}:")
        print(f"  ALTA (adapters, masking 0.75, four losses): {res['alta_step_s']:.3f} s, peak {res['alta_peak_mib']:.0f} MiB"
              f" (load {res['alta_load_avg']})")
        print(f"  full fine-tuning, unmasked:                 {res['full_step_s']:.3f} s, peak {res['full_peak_mib']:.0f} MiB"
              f" (load {res['full_load_avg']})")
        print(f"step_ratio = {res['step_ratio']:.3f} (target <= 0.35), memory_ratio = {res['memory_ratio']:.3f} (target < 1)")
        print(f"flop_ratio = {res['flop_ratio']:.3f} (counted: ALTA {res['alta_gflop']:.0f} GFLOP, full fine-tuning "
              f"{res['full_gflop']:.0f} GFLOP per step; the step_ratio of a compute-bound device)")
    if args.json:
        print(json.dumps(res))
    return 0


def _bench_s2d_step(args: argparse.Namespace) -> int:
    import json

    from .bench.s2d_step import bench_s2d_step

    res = bench_s2d_step(args.batch_size, args.stage, args.report_tokens, device=args.device, dtype=args.dtype,
                         gradient_checkpointing=not args.no_checkpointing, layers=args.layers, repeats=args.repeats)
    sh = res["lm_shape"]
    print(f"S2D-ALIGN training step at paper scale (random weights, nothing downloaded), {res['device']}, {res['dtype']}")
    print(f"LM: {sh['layers']} layers x {sh['hidden']} (MLP {sh['intermediate']}, vocabulary {sh['vocab_size']}), "
          f"LoRA r = 16 on every linear layer, gradient checkpointing {'on' if res['gradient_checkpointing'] else 'off'}; "
          f"SMA on {res['patches'][0]} patches of {res['patches'][1]}; stage {res['stage']}")
    for pt in res["points"]:
        print(f"  measured with {pt['layers']:>2} layer(s): {pt['seconds']:.3f} s per step, peak +{pt['peak_added_mib']:.0f} MiB"
              f" (weights {pt['weights_mib']:.0f} MiB; load {pt['load_avg']})")
    if res["extrapolated"]:
        print(f"  {res['extrapolated']}: {res.get('per_layer_s', float('nan')):.3f} s per layer")
    print(f"B = {res['B']}, {res['sequence']} positions per study, {res['lm_tokens']} LM tokens per step "
          f"({res['report_tokens']} supervised)")
    print(f"step {res['step_s']:.2f} s, {res['tokens_per_s']:.1f} LM tokens/s, {res['report_tokens_per_s']:.1f} report "
          f"tokens/s; trainable {res['trainable_params'] / 1e6:.1f} M of {res['params'] / 1e9:.2f} B; peak "
          f"{res['peak_mib']:.0f} MiB")
    if args.json:
        print(json.dumps(res))
    return 0


def _bench_train_step(args: argparse.Namespace) -> int:
    import json

    from .bench.train_step import bench_train_step
    from .methods import list_methods

    names = list_methods() if args.method == "all" else [args.method]
    results, skipped = [], {}
    for name in names:
        try:
            res = bench_train_step(name, steps=args.steps, warmup=args.warmup, config=args.config,
                                   overrides=tuple(args.set), manifest=args.manifest, device=args.device,
                                   threads=args.threads, seed=args.seed)
        except ValueError as e:
            if args.method != "all" or "no training-step setup" not in str(e):
                raise
            skipped[name] = str(e)
            continue
        results.append(res)
        print(f"{name} ({res['config']}), {res['device']}, {res['threads']} thread(s), batch {res['batch_size']}; "
              f"mean of {res['steps']} steps after {res['warmup']} per stage; load average {res['load_avg']}")
        for note in res["notes"]:
            print(f"  {note}")
        print(f"  {'run':<7}{'stage':<18}{'steps/s':>8}{'ms/step':>9}  {'data':>6}{'encoders':>9}{'head/loss':>10}"
              f"{'optimizer':>10}{'other':>7}  {'default budget':>15}")
        for run, stages in res["runs"].items():
            for stage, s in stages.items():
                sh = s["shares"]
                budget = res["budget_steps"].get(stage)
                when = f"{budget} steps ~{budget / s['steps_per_s'] / 60:.1f} min" if budget else "-"
                print(f"  {run:<7}{stage:<18}{s['steps_per_s']:>8.2f}{s['step_s'] * 1e3:>9.0f}  {sh['data']:>6.0%}"
                      f"{sh['encoders']:>9.0%}{sh['head_loss']:>10.0%}{sh['optimizer']:>10.0%}{sh['other']:>7.0%}  {when:>15}")
        print("  first: the run that fills the caches a notebook's runs share; second: every later run")
    for name, why in skipped.items():
        print(f"{name}: not profiled ({why})")
    if args.json:
        print(json.dumps(results if args.method == "all" else results[0]))
    return 0


def _bench_all(args: argparse.Namespace) -> int:
    import contextlib
    import json

    from .bench.all import bench_all, check_methods

    methods = check_methods(args.methods.split(",")) if args.methods is not None else None  # before anything runs
    # --json: stdout is the one JSON line; whatever the benches print goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        res = bench_all(args.device, methods, shapes=args.shapes)
    if args.json:
        print(json.dumps(res, allow_nan=False))
        return 0
    meta = res["_meta"]
    print(f"medalign bench all: {meta['device']}, torch {meta['torch']}, {meta['date']}, {meta['threads']} thread(s), "
          f"load average {meta['load_avg_start']} -> {meta['load_avg_end']}, {meta['wall_s']:.0f} s wall, "
          f"{meta['cpu_s']:.0f} s CPU")
    print(f"shapes {meta['shapes_name']}: {meta['shapes_why']}")
    ref = meta.get("gloria_reference")
    if ref:
        print(f"GLoRIA local loss (the vs_gloria reference), B = {ref['B']}, T = {ref['T']}, P = {ref['P']}, "
              f"D = {ref['D']}: {ref['seconds'] * 1e3:.1f} ms, peak {ref['peak_mib']} MiB")

    def num(x, fmt: str) -> str:
        return format(x, fmt) if isinstance(x, (int, float)) else "-"

    print(f"{'method':<9}{'kind':<17}{'trainable':>11}{'params':>9}{'ms/step':>9}{'peak MiB':>9}{'head/loss':>10}"
          "  ratios (tutorial config's step: second run, last stage; ratios at the shapes above)")
    for name in meta["methods"]:
        e = res[name]
        c = e.get("cost", {})
        ratios = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in e["ratios"].items())
        if "skipped" in c:
            ratios = f"train step not profiled ({c['skipped']}); {ratios}"
        trainable = num(c.get("trainable_params") and c["trainable_params"] / 1e6, ".2f")
        params = num(c.get("params") and c["params"] / 1e6, ".1f")
        print(f"{name:<9}{e['kind']:<17}{trainable + ' M':>11}{params + ' M':>9}{num(c.get('step_s') and c['step_s'] * 1e3, '.0f'):>9}"
              f"{num(c.get('peak_mib'), '.0f'):>9}{num(c.get('head_loss_share'), '.0%'):>10}  {ratios}")
    return 0


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from .data.builders import BUILDERS

    p = argparse.ArgumentParser(prog="medalign", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="build, validate and benchmark datasets").add_subparsers(
        dest="data_command", required=True)

    b = data.add_parser("build", help="write DIR/manifest.csv for a dataset")
    b.add_argument("name", choices=list(BUILDERS))
    b.add_argument("--out", required=True, help="output folder (manifest.csv goes here)")
    b.add_argument("--root", default=None, help="the dataset's local copy (real datasets)")
    b.add_argument("--size", type=int, default=None, help="image size in pixels (phantoms: 224)")
    b.add_argument("--limit", type=int, default=None, help="keep the first N studies")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=None, help="processes/threads (default: all cores)")
    b.add_argument("--reports-root", default=None,
                   help="mimic-cxr: folder tree or mimic-cxr-reports.zip with files/pXX/pID/sID.txt")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_data_build)

    v = data.add_parser("validate", help="check a manifest file and every row; exit 1 on problems, 2 on a bad command")
    v.add_argument("manifest")
    v.add_argument("--no-files", action="store_true",
                   help="do not look at the image files (paths must still be relative and inside the folder)")
    v.add_argument("--deep", action="store_true",
                   help="also open every image and mask: format, size, mode, and that it decodes")
    v.add_argument("--allow-absolute", action="store_const", const=True, default=None,
                   help="accept absolute image paths and paths leading out of the manifest's folder "
                        "(a real dataset on another disk; a build without --size declares this in its "
                        "build_info.json, which is read when the flag is absent)")
    v.add_argument("--workers", type=_positive_int, default=None,
                   help="processes for --deep (default: the usable CPUs, at most 8)")
    v.set_defaults(func=_data_validate)

    r = data.add_parser("bench-render", help="phantom render speed on one core")
    r.add_argument("--n", type=int, default=400)
    r.add_argument("--size", type=int, default=224)
    r.add_argument("--view", default="PA")
    r.set_defaults(func=_data_bench_render)

    lab = sub.add_parser("label", help="write the 14 CheXpert observation columns for every row of a CSV")
    lab.add_argument("input")
    lab.add_argument("--text-col", required=True, help="text column (or comma-separated columns, joined)")
    lab.add_argument("--out", required=True)
    lab.set_defaults(func=_label)

    m = sub.add_parser("methods", help="the registered methods: name, kind, paper, packaged configs")
    m.add_argument("--kind", choices=["dual_encoder", "report_generator"], default=None)
    m.set_defaults(func=_methods)

    bench = sub.add_parser("bench", help="speed and memory benchmarks").add_subparsers(
        dest="bench_command", required=True)
    g = bench.add_parser("gloria", help="GLoRIA's batched local loss at paper shapes, growth with B")
    g.add_argument("--batch-sizes", default="8,16,32,48")
    g.add_argument("--tokens", type=int, default=97, help="T (GLoRIA: 97 words)")
    g.add_argument("--patches", type=int, default=361, help="P (ResNet-50 layer3 at 299 px: 19x19)")
    g.add_argument("--dim", type=int, default=768, help="D (GLoRIA projects to 768)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--chunk", type=int, default=None, help="reports per chunk (memory bound)")
    g.add_argument("--json", action="store_true", help="last line: the result as JSON")
    g.set_defaults(func=_bench_gloria)

    a = bench.add_parser("aga", help="AGA head vs encoders vs GLoRIA local loss at paper shapes (ratios)")
    a.add_argument("--batch-size", type=int, default=48, help="B (the paper's 48)")
    a.add_argument("--tokens", type=int, default=97, help="T (97, as GLoRIA/MGCA)")
    a.add_argument("--patches", type=int, default=361, help="P of the head and GLoRIA (ResNet-50 layer3 at 299 px)")
    a.add_argument("--dim", type=int, default=128, help="d (AGA projects to 128)")
    a.add_argument("--gloria-dims", default="768,128", help="GLoRIA widths; the first gives vs_gloria")
    a.add_argument("--vision", default="timm:resnet50", help="image encoder (random weights)")
    a.add_argument("--image-size", type=int, default=299)
    a.add_argument("--no-encoders", action="store_true", help="skip the encoders (no head_share)")
    a.add_argument("--encoder-batch", type=int, default=None,
                   help="pairs the encoders run on, extrapolated to B (default: B on cuda, 2 on cpu)")
    a.add_argument("--gloria-repeats", type=int, default=None,
                   help="GLoRIA's timed runs (default: --repeats on cuda, 1 on cpu, where B = 48 takes minutes)")
    a.add_argument("--compile", action="store_true",
                   help="on cpu also time the head compiled by inductor (minutes to compile; cuda compiles by default)")
    a.add_argument("--device", default="cpu")
    a.add_argument("--dtypes", default=None,
                   help="comma-separated (default: float32,bfloat16 on cuda, float32 on cpu)")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--json", action="store_true", help="last line: the result as JSON")
    a.set_defaults(func=_bench_aga)

    ts = bench.add_parser("train-step", help="one training step of a registered method at its tutorial config, "
                                            "phase by phase (data, encoders, head/loss, optimizer)")
    ts.add_argument("--method", required=True, help="a registered method (medalign methods), or 'all'")
    ts.add_argument("--config", default=None, help="config name or YAML path (default: <method>_tiny)")
    ts.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override, e.g. data.cache_text=true (repeatable)")
    ts.add_argument("--steps", type=_positive_int, default=10, help="steps measured per stage and run")
    ts.add_argument("--warmup", type=int, default=2, help="steps left out first, per stage and run")
    ts.add_argument("--manifest", default=None, help="training manifest (default: IU-Phantom, 224 px)")
    ts.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: the notebook's: 1 for s2d, else torch's)")
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--device", default="cpu")
    ts.add_argument("--json", action="store_true", help="last line: the result as JSON")
    ts.set_defaults(func=_bench_train_step)

    s = bench.add_parser("s2d-generate", help="S2D-ALIGN report generation speed (beam search, KV cache)")
    s.add_argument("--n-reports", type=int, default=256)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--num-beams", type=int, default=3)
    s.add_argument("--max-new-tokens", type=int, default=120)
    s.add_argument("--report-tokens", type=int, default=46,
                   help="every report ends after this many tokens (<eos> forced; an untrained LM rarely stops): "
                        "46 = IU mean in tiny-tokenizer words + <eos>; 0 = generate freely")
    s.add_argument("--config", default="s2d_tiny", help="packaged config name or YAML path")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override, e.g. model.memory_size=32 (repeatable)")
    s.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    s.add_argument("--processes", type=int, default=1,
                   help="CPU processes generating side by side, the reports split between them (threads shared out)")
    s.add_argument("--no-prefill", action="store_true", help="let generate run the prompt once per beam")
    s.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OpenMP wait policy of the measuring process (PASSIVE: no spinning on a shared machine; "
                        "'' = as this process)")
    s.add_argument("--compare", action="store_true", help="also time the other prompt path")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="last line: the result as JSON")
    s.set_defaults(func=_bench_s2d_generate)

    ss = bench.add_parser("s2d-step", help="S2D-ALIGN: one training step at paper scale (Vicuna-7B's shape in bf16, "
                                           "LoRA, gradient checkpointing; a CPU extrapolates from 1 and 3 layers)")
    ss.add_argument("--batch-size", type=_positive_int, default=4)
    ss.add_argument("--stage", type=int, default=1, choices=[1, 2, 3], help="the curriculum stage (its soft tokens)")
    ss.add_argument("--report-tokens", type=_positive_int, default=160, help="report tokens with <eos> (s2d_full's)")
    ss.add_argument("--layers", type=_positive_int, default=None,
                    help="LM layers to run (default: 32 on cuda; 1 and 3 on a cpu, extrapolated to 32)")
    ss.add_argument("--no-checkpointing", action="store_true", help="keep every activation (no recomputation)")
    ss.add_argument("--device", default="cpu")
    ss.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ss.add_argument("--repeats", type=_positive_int, default=2)
    ss.add_argument("--json", action="store_true", help="last line: the result as JSON")
    ss.set_defaults(func=_bench_s2d_step)

    x = bench.add_parser("exgramed", help="ExGra-Med: aligner and text-pass shares of the LM step, solver ms per step")
    x.add_argument("--device", default="cpu")
    x.add_argument("--repeats", type=int, default=3)
    x.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[16, 32, 64, 128])
    x.add_argument("--solver", default="ipfp", choices=["ipfp", "lap"], help="the aligner's solver in the shares")
    x.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: the issue's one core)")
    x.add_argument("--no-paper", action="store_true", help="skip the paper-shape aligner and the 4096-wide layer")
    x.add_argument("--json", action="store_true", help="last line: the result as JSON")
    x.set_defaults(func=_bench_exgramed)
    al = bench.add_parser("alta", help="ALTA: trainable fraction at paper scale, masked adapter step vs full fine-tuning")
    al.add_argument("--config", default="alta_full", help="packaged config name or YAML path (its shapes, random weights)")
    al.add_argument("--batch-size", type=int, default=None, help="B (default: 24 on cuda, 2 on cpu)")
    al.add_argument("--tokens", type=int, default=128, help="T (the code pads reports to 128)")
    al.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    al.add_argument("--no-steps", action="store_true", help="only count parameters")
    al.add_argument("--device", default="cpu")
    al.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    al.add_argument("--repeats", type=int, default=3)
    al.add_argument("--json", action="store_true", help="last line: the result as JSON")
    al.set_defaults(func=_bench_alta)

    ba = bench.add_parser("all", help="every registered method's benches in one run: one JSON object keyed by method, "
                                      "with the cost ratios between them")
    ba.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda or cuda:N")
    ba.add_argument("--methods", default=None, help="comma-separated registered methods (default: all; medalign methods)")
    ba.add_argument("--shapes", default="auto", choices=["auto", "paper", "cpu"],
                    help="auto: the papers' on cuda, scaled down on a cpu (said in the output)")
    ba.add_argument("--json", action="store_true", help="print one JSON line and nothing else on stdout")
    ba.set_defaults(func=_bench_all)
    return p


def _methods(args) -> int:
    from .config import available_configs
    from .methods import get_method, list_methods

    configs = set(available_configs())
    for name in list_methods(args.kind):
        spec = get_method(name)
        scales = [c for c in (spec.config_name("tiny"), spec.config_name("full")) if c in configs]
        where = f"{spec.module.__module__}.{spec.module.__name__}"
        print(f"{name:<8} {spec.kind:<17} {where:<40} {', '.join(scales) or '-':<27} {spec.paper}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 1 the data or a file is wrong (a manifest's
    problems, listed; an OSError, as ``medalign: error: <path>: <reason>``), 2 the command
    line is wrong (argparse's errors, and the commands' ValueError / KeyError / usage checks)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OSError as e:  # a file that is missing, unreadable or unwritable: its path, no traceback
        print(f"medalign: error: {_os_error_line(e)}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, KeyError) as e:  # user errors: one clear message, no traceback
        manifest = sys.modules.get(f"{__package__}.data.manifest")  # loaded if it raised
        if manifest is not None and isinstance(e, manifest.ManifestError):  # a bad manifest: every problem
            print(e, file=sys.stderr)
            return 1
        print(f"medalign: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
