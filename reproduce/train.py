"""Train (or resume) one experiment from its config.

    python -m reproduce.train sinusoid/maml [--iterations N] [--set train.meta_batch=16] [--run-dir DIR]
"""
from __future__ import annotations

import sys

from maml_tf import train as train_lib
from maml_tf.config import ConfigError, RLConfig
from reproduce import common


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("config", help="a config under reproduce/configs (e.g. omniglot/conv_5w1s) or a path")
    p.add_argument("--run-dir", default=None)
    args = common.parse(p, argv, replicas=None)
    try:
        cfg = common.load(args.config, args.iterations, args.set)
        common.use_cores(args.threads, replicas=not isinstance(cfg, RLConfig))
        if isinstance(cfg, RLConfig):  # an RL config (reproduce/configs/rl/...)
            from maml_tf import rl_train
            rl_train.train(cfg, args.run_dir or common.run_dir(cfg, args.results), quiet=args.quiet)
        else:
            train_lib.train(cfg, args.run_dir or common.run_dir(cfg, args.results), quiet=args.quiet)
    except (ConfigError, train_lib.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGINT / SIGTERM: the loop saved a checkpoint first
        print("stopped: a checkpoint was saved; the same command resumes the run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
