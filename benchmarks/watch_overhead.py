"""Step-time overhead of `gradhealth.watch()` (default settings, and every step forced) and of `wandb.watch` beside it.

Each model is trained in copies with the same initial weights: the plain loop; the loop under
`gradhealth.watch(model, optimizer)` at its defaults (every=1 with the 3% overhead budget, which
raises the recording stride when recording costs more); the loop under
`gradhealth.watch(model, optimizer, budget=None)`, which records every step whatever it costs;
both ship to a real local `gradhealth serve` (or, with `--sink stub`, a stub HTTP server that
accepts and discards every POST); and the loop under `wandb.watch(model, log="gradients",
log_freq=1)` in offline mode, which needs a `wandb.log` per step to commit its histograms.

Statistics, not luck (benchmarks/_paired.py): after `--warmup` steps per copy (the budget settles
its stride within ~25 steps), `--rounds` short rounds; in each, every copy trains `--steps` steps
(default: as many as take about `--round-seconds`), in an order that rotates, so each watched
copy's round has a plain round beside it. The overhead is the watched copies' total time over the
plain loop's, minus 1 (a mean: sketches and POSTs come in rare lumps that a median would miss),
with a 95% bootstrap interval over rounds; "median" is the median of the per-round ratios, as a
cross-check. PASS: the point estimate is within 3%; the verdict says whether the upper bound is too.

Shipping is charged to the copy that ships: after each of its rounds a watched copy is flushed
outside the timer (so no POST of one copy lands in another copy's round) and the CPU time its
shipping thread spent in that flush (msgpack, HTTP, under the GIL the training thread needs) is
added to the round. That ships once a round instead of every 2 s: if anything, more POSTs than at
the defaults. Cores: the training thread runs torch on one thread (torch.set_num_threads(1)); the
sink is another process (`gradhealth serve`), so on 2 cores it has the other one, with the handle's
shipping thread, which shares the training process's GIL. On a machine shared with other work the
interval widens; read the load (printed before and after) with the numbers.

"stride" is the default handle's recording interval at the end and, in brackets, the overhead it
measured itself (its hook sections only: see the difference to the column before it). wandb is
measured in a second interleaved pair with its own plain loop, each round starting on a quiet
machine, because its service process keeps working between rounds.

Models: a small causal transformer (AdamW) and a small CNN with BatchNorm (SGD), typical steps of
~50-200 ms on a CPU, and a wide MLP at batch 16 (SGD with momentum), memory-bound: its step is
little more than reading the weights and gradients, so any extra pass over them shows.

Budget (DESIGN.md §6): watch() adds <= 3% step time at default settings.

    python benchmarks/watch_overhead.py [--rounds 30] [--round-seconds 0.8] [--steps N] [--warmup 40]
                                        [--models transformer,cnn,mlp] [--sink serve|stub] [--no-wandb]
                                        [--distributed ddp,fsdp]

"no dist." is watch() at its defaults with distributions=False: the difference to "watch()" is the
cost of the distribution sketches at the stride watch() chose for them ("sketch stride" column: from
the sketches' measured cost and what recording leaves of the same 3% budget, docs/runs.md).
--distributed adds, per model, the overhead of watch() under DDP and FSDP2 on 2 CPU processes
(benchmarks/watch_distributed.py).

wandb is not a dependency of gradhealth: `pip install wandb` into the environment to compare.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
import torch.nn.functional as F
from gradhealth.sdk.watching import WatchWarning
from torch import nn

import gradhealth

sys.path.insert(0, str(Path(__file__).parent))
from _paired import Estimate, paired  # noqa: E402
from service import _port, embedded  # noqa: E402

BUDGET = 0.03
STUB = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def _ok(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        created = self.path == "/v1/runs"
        body = b'{"id": "bench", "name": "b", "num_layers": 1, "metrics": []}' if created else b'{"stored": true}'
        self.send_response(201 if created else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET = _ok
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class TinyGPT(nn.Module):
    """A 4-layer pre-norm causal transformer language model."""

    def __init__(self, vocab: int = 1000, width: int = 256, depth: int = 4, seq: int = 64) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(seq, width)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        return self.head(self.norm(self.blocks(h, mask=self.mask, is_causal=True))).flatten(0, 1)


def _cnn() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(
        block(3, 32), block(32, 64), nn.MaxPool2d(2), block(64, 128), block(128, 128), nn.MaxPool2d(2),
        block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10),
    )  # fmt: skip


def _mlp(width: int = 2048, depth: int = 6) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(256, width)]
    for _ in range(depth - 1):
        layers += [nn.ReLU(), nn.Linear(width, width)]
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(width, 10))


@dataclass
class Case:
    """A model, its optimizer and one fixed batch."""

    name: str
    build: Callable[[], nn.Module]
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]


CASES = {
    "transformer": Case(
        "transformer (AdamW)",
        TinyGPT,
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-4),
        lambda g: (torch.randint(0, 1000, (8, 64), generator=g), torch.randint(0, 1000, (8 * 64,), generator=g)),
    ),
    "cnn": Case(
        "CNN + BatchNorm (SGD)",
        _cnn,
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9),
        lambda g: (torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)),
    ),
    "mlp": Case(
        "MLP 6x2048, batch 16 (memory-bound)",
        _mlp,
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9),
        lambda g: (torch.randn(16, 256, generator=g), torch.randint(0, 10, (16,), generator=g)),
    ),
}


@dataclass
class Variant:
    """One copy of the model trained one way; `times` holds its time per round (seconds per step)."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    log: Callable[[torch.Tensor], None]
    close: Callable[[], None] = lambda: None
    after: Callable[[], float] = lambda: 0.0  # after a round, outside the timer: seconds to charge to it
    times: list[float] = field(default_factory=list)

    def run(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
            self.log(loss)
        return (time.perf_counter() - start + self.after()) / steps


def shipping_charge(handle: Any) -> Callable[[], float]:
    """Flush `handle` now and return the CPU seconds its shipping thread spent meanwhile (0 off Linux).

    The flush keeps one copy's POSTs out of the next copy's round; the CPU time is what shipping took
    from the process (packing and HTTP hold the GIL the training thread needs), charged to this copy.
    """

    def charge() -> float:
        thread = getattr(getattr(handle, "_shipper", None), "_thread", None)
        if thread is None or thread.ident is None or not hasattr(time, "pthread_getcpuclockid"):
            handle.flush()
            return 0.0
        clock = time.pthread_getcpuclockid(thread.ident)
        start = time.clock_gettime(clock)
        handle.flush()
        try:
            return time.clock_gettime(clock) - start
        except OSError:  # the thread has ended (the handle was closed)
            return 0.0

    return charge


def _copies(case: Case, n: int) -> list[tuple[nn.Module, torch.optim.Optimizer]]:
    """n copies of the model with the same initial weights, each with its own optimizer."""
    torch.manual_seed(0)
    base = case.build()
    out = []
    for _ in range(n):
        model = case.build()
        model.load_state_dict(base.state_dict())
        out.append((model, case.optimizer(model)))
    return out


def _busy(interval: float = 0.25) -> float:
    """Fraction of the machine's CPU time that was busy over `interval` seconds (Linux /proc/stat)."""

    def snapshot() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total, idle = snapshot()
    time.sleep(interval)
    total2, idle2 = snapshot()
    return 1.0 - (idle2 - idle) / max(1, total2 - total)


def settle(limit: float = 0.15, max_wait: float = 3.0) -> None:
    """Wait (a little) until background work (wandb's service process) has drained."""
    if not Path("/proc/stat").exists():
        time.sleep(0.5)
        return
    deadline = time.monotonic() + max_wait
    while _busy() > limit and time.monotonic() < deadline:
        pass


def load() -> str:
    """The load averages, as `uptime` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def steps_per_round(variant: Variant, x: torch.Tensor, y: torch.Tensor, seconds: float) -> int:
    """Steps that take about `seconds` in the plain loop (at least 2), timed over 5 steps after 5 untimed."""
    variant.run(x, y, 5)
    per_step = variant.run(x, y, 5)
    return max(2, round(seconds / per_step))


def interleave(
    variants: list[Variant], x: torch.Tensor, y: torch.Tensor, rounds: int, steps: int, warmup: int, quiet: bool = False
) -> None:
    """Warm up, then rounds with a rotating order, so drift and order effects hit every variant alike.

    `quiet`: each round starts on a quiet machine, for wandb: async work it leaves behind must not
    land in the next variant's round. That work is then charged to no one, which can only flatter
    wandb. gradhealth's copies need no wait: each one's shipping is flushed and charged (`after`).
    """
    try:
        for variant in variants:
            variant.run(x, y, warmup)
            variant.after()  # the first flush opens the connection: not a round's cost
        for r in range(rounds):
            for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
                if quiet:
                    settle()
                variant.times.append(variant.run(x, y, steps))
    finally:
        for variant in variants:
            variant.close()


def measure(
    case: Case,
    client: gradhealth.Client,
    rounds: int,
    steps: int,
    warmup: int,
    use_wandb: bool,
    round_seconds: float = 0.8,
) -> dict[str, Any]:
    """Each variant's Estimate against its plain loop, plus the plain step time ("plain"), steps per round,
    the default handle's final stride ("stride"), its self-measured overhead ("measured") and sketch stride.

    gradhealth's variants are interleaved with one plain loop; wandb gets a second interleaved
    pair with its own plain loop, so its service process never runs during gradhealth's rounds.
    """
    x, y = case.batch(torch.Generator().manual_seed(1))
    copies = _copies(case, 4)
    variants = [Variant("plain", *copies[0], lambda loss: None)]
    steps = steps or steps_per_round(variants[0], x, y, round_seconds)
    handles = {}
    for name, budget, (model, opt) in zip(
        ("default", "budget=None", "no dist."), (BUDGET, None, BUDGET), copies[1:], strict=True
    ):
        sketches = name != "no dist."
        run = f"bench-{case.name}-{name}"
        handle = gradhealth.watch(model, opt, run=run, client=client, budget=budget, distributions=sketches)
        handles[name] = handle
        log = lambda loss, h=handle: h.log(loss=loss)  # noqa: E731
        variants.append(Variant(name, model, opt, log, handle.close, shipping_charge(handle)))
    interleave(variants, x, y, rounds, steps, warmup)
    out: dict[str, Any] = {v.name: paired(variants[0].times, v.times) for v in variants[1:]}
    if use_wandb:
        import wandb

        (model, opt), (watched, watched_opt) = _copies(case, 2)
        run = wandb.init(project="gradhealth-bench", name=case.name)  # wandb.watch hooks log to wandb.run
        run.watch(watched, log="gradients", log_freq=1)
        pair = [
            Variant("plain", model, opt, lambda loss: None),
            Variant("wandb", watched, watched_opt, lambda loss: run.log({"loss": loss.item()}), run.finish),
        ]
        interleave(pair, x, y, rounds, steps, warmup, quiet=True)
        out["wandb"] = paired(pair[0].times, pair[1].times)
    out["plain"] = statistics.median(variants[0].times)
    out["steps"] = steps
    out["stride"] = handles["default"].stride
    out["measured"] = handles["default"].overhead or math.nan
    out["sketch stride"] = handles["default"].sketch_stride or math.nan  # NaN: none chosen (step time unmeasured)
    return out


@contextmanager
def stub_sink() -> Iterator[tuple[str, str]]:
    """A discard-everything HTTP server in its own process (so it takes no GIL from the loop)."""
    port = _port()
    proc = subprocess.Popen([sys.executable, "-c", STUB, str(port)])
    try:
        _wait_ready_stub(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}", "stub"
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_ready_stub(url: str) -> None:
    for _ in range(100):
        try:
            httpx.post(url + "/v1/runs", content=b"{}", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the stub server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=0, help="steps per copy and round (0: --round-seconds' worth)")
    parser.add_argument("--round-seconds", type=float, default=0.8, help="plain-loop seconds per round")
    parser.add_argument("--warmup", type=int, default=40, help="steps per variant before the rounds")
    parser.add_argument("--models", default="transformer,cnn,mlp")
    parser.add_argument("--sink", choices=["serve", "stub"], default="serve")
    parser.add_argument("--no-wandb", action="store_true")
    parser.add_argument("--distributed", default="", help="also ddp and/or fsdp on 2 CPU processes: ddp,fsdp")
    parser.add_argument(
        "--distributed-rounds", type=int, default=60,
        help="paired rounds per distributed row (2-process steps vary more than one process's: more rounds)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core for the training thread; the sink (another process) has the other
    use_wandb = not args.no_wandb
    warnings.filterwarnings("ignore", category=WatchWarning)  # the throttle's note: the "stride" column shows it
    if use_wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            print("wandb is not installed: comparing with the plain loop only")
            use_wandb = False
    with tempfile.TemporaryDirectory(prefix="gradhealth-watch-bench-") as tmp:
        os.environ.update(WANDB_MODE="offline", WANDB_DIR=tmp, WANDB_SILENT="true", WANDB_CONSOLE="off")
        sink = embedded(Path(tmp)) if args.sink == "serve" else stub_sink()
        with sink as (url, key):
            client = gradhealth.Client(base_url=url, api_key=key)
            print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {os.cpu_count()} cores; sink: "
                  f"{'gradhealth serve (SQLite)' if args.sink == 'serve' else 'stub HTTP server'} in its own process at {url}")  # fmt: skip
            print(f"start: {load()}")
            print(
                f"{args.warmup} warm-up steps, then {args.rounds} paired rounds (rotating order); added time vs plain: "
                "total-time ratio [95% bootstrap interval over rounds]\n"
            )
            print(
                f"{'model':38s} {'plain':>8s} {'steps':>5s} {'watch() [95% CI]':>22s} {'median':>7s} "
                f"{'stride (measured)':>17s} {'budget=None':>11s} {'wandb.watch':>11s} {'no dist.':>8s} "
                f"{'sketch stride':>13s}  verdict"
            )
            worst: Estimate | None = None
            for name in args.models.split(","):
                got = measure(CASES[name], client, args.rounds, args.steps, args.warmup, use_wandb, args.round_seconds)
                default: Estimate = got["default"]
                worst = default if worst is None or default.point > worst.point else worst
                cells = [f"{got[k].point:+.1%}" if k in got else "-" for k in ("budget=None", "wandb", "no dist.")]
                stride = f"{got['stride']:.0f} ({got['measured']:.1%})"
                print(
                    f"{CASES[name].name:38s} {got['plain'] * 1e3:5.1f} ms {got['steps']:>5d} {default.cell():>22s} "
                    f"{default.median_ratio:>+7.1%} {stride:>17s} {cells[0]:>11s} {cells[1]:>11s} {cells[2]:>8s} "
                    f"{got['sketch stride']:>13.0f}  {default.verdict(BUDGET)}"
                )
            for mode in filter(None, args.distributed.split(",")):
                from watch_distributed import measure as measure_distributed

                for name in args.models.split(","):
                    dgot = measure_distributed(
                        mode, name, (url, key), args.distributed_rounds, args.steps, args.warmup, args.round_seconds
                    )
                    est: Estimate = dgot["overhead"]
                    worst = est if worst is None or est.point > worst.point else worst
                    print(
                        f"{mode.upper()} x2 {CASES[name].name:31s} {dgot['plain'] * 1e3:5.1f} ms {dgot['steps']:>5d} "
                        f"{est.cell():>22s} {est.median_ratio:>+7.1%} stride {dgot['stride']}, "
                        f"sketch stride {dgot['sketch_stride']}  {est.verdict(BUDGET)}"
                    )
            print(f"\nend: {load()}")
            if worst is not None:
                print(
                    f"worst watch() overhead at default settings {worst.cell()}: {worst.verdict(BUDGET)} at {BUDGET:.0%}"
                )


if __name__ == "__main__":
    main()
