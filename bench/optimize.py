"""The optimizer's figure (issue 16): prints figures, asserts nothing.

Cost per 1,000 requests of `flywheel optimize`'s pick against the default option (the promoted
adapter as a promotion serves it: float32, on the shared base, no speculation), at quality not
significantly worse, and how long the search took; then the service is restarted and the task's
alias must still be served by the pick.

    .venv/bin/python bench/optimize.py --data-dir D [--task support-triage] [--budget-s 900]

D is a data folder where `flywheel demo --data-dir D` ran (its task's production is a promoted
adapter on the embedded SmolLM2 base; its flywheel.toml adds a 6-layer cut to the default options). The search runs through a real `flywheel serve` on D,
with D's `[optimize]` settings (the time budget overridden by `--budget-s`), and applies the
pick: `flywheel rollback --task T --data-dir D` undoes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # (before bench/, whose evals.py would shadow the package)
from conftest import Server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--task", default="support-triage")
    parser.add_argument("--budget-s", type=float, default=900.0)
    args = parser.parse_args()

    from evals.optimizer import markdown
    from flywheel.settings import load_settings
    from flywheel.task import resolve_task
    from pipelines.loop import optimize_stage, service_key

    server = Server(args.data_dir)
    os.environ["FLYWHEEL_PORT"] = str(server.port)  # this process's settings and the service's agree
    os.environ["FLYWHEEL_OPTIMIZE__TIME_BUDGET_S"] = str(args.budget_s)
    server.env.update(os.environ)
    settings = load_settings(args.data_dir)
    task = resolve_task(settings, args.task, required=True)
    server.start()
    try:
        with service_key(settings, task.project) as key:
            result = optimize_stage(settings, task, key=key)
            print(markdown(result))
            base = result.baseline
            if result.pick is not None:
                pick = result.pick
                print(f"pick {pick.option.name}: {pick.compute_s_per_1k:.1f} compute s per 1k requests vs "
                      f"{base.compute_s_per_1k:.1f} for {base.option.name}: {base.compute_s_per_1k / pick.compute_s_per_1k:.2f}x "
                      f"lower cost (target >= 2x); quality {pick.quality:.3f} vs {base.quality:.3f} "
                      f"({pick.verdict}); p95 {pick.p95_ms:.0f} vs {base.p95_ms:.0f} ms")  # fmt: skip
            print(f"search took {result.elapsed_s:.0f} s over {', '.join(map(str, result.rungs))} examples per rung; "
                  f"{result.reason}")  # fmt: skip
            server.kill()
            server.start()
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)
            answer = client.chat.completions.create(model=args.task, max_tokens=8, temperature=0,
                                                    messages=[{"role": "user", "content": "my parcel is late"}])  # fmt: skip
            print(f"after a restart, {args.task} is served by {answer.model}: {answer.choices[0].message.content!r}")
    finally:
        server.proc.kill()


if __name__ == "__main__":
    main()
