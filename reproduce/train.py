"""Train (or resume) one experiment from its config.

    python -m reproduce.train sinusoid/maml [--iterations N] [--set train.meta_batch=16] [--run-dir DIR]
"""
from __future__ import annotations

import sys

from maml_tf.config import RLConfig
from reproduce import common


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("config", help="a config under reproduce/configs (e.g. omniglot/conv_5w1s) or a path")
    p.add_argument("--run-dir", default=None,
                   help="the run's directory (default: RESULTS/<experiment>/<method> of the config, "
                        "<method>_seed<N> with --set seed=N other than the config's)")
    args = common.parse(p, argv, replicas=None)

    def body():
        cfg = common.load(args.config, args.iterations, args.set)
        # one logical CPU per core for a mirrored replica each; otherwise (one device, or one
        # replica per worker in a multi-worker run) every core serves the one device
        common.use_cores(args.threads, replicas=not isinstance(cfg, RLConfig)
                         and cfg.train.distribute == "mirrored")
        run_dir = args.run_dir or common.run_dir(cfg, args.results, args.config)
        from maml_tf import train as train_lib
        train_lib.train(cfg, run_dir, quiet=args.quiet)

    return common.guard(body)


if __name__ == "__main__":
    sys.exit(main())
