"""Meta-reinforcement learning (paper §5.3), split by role:

  distributions  the policy's Gaussian (output layout, log-likelihood, KL) and the losses on it
  sampler        task and rollout seeds, the task distributions, the vectorised `Sampler`
  learner        MAML-TRPO and the TRPO baselines (`PolicyLearner`), and `RLRun`, the learner that
                 the run loop of `maml_tf.loop` trains
  evaluation     the test protocol of a policy, the baselines' step-size search

The names used across the project are importable from here (`from maml_tf import rl; rl.Sampler`).
"""
from maml_tf.rl.distributions import (Samples, TRPOSamples, gaussian_kl, gaussian_log_prob, inner_targets, loss_inputs,  # noqa: F401
                                      masked_task_mean, pooled_kl, split_dist, surrogate_loss, valid_count, vpg_loss)
from maml_tf.rl.sampler import RolloutBatch, Rollouts, Sampler, env_dims, make_vec_env, sampler, seed_of, task_sampler  # noqa: F401
from maml_tf.rl.learner import PolicyLearner, RLRun, build_model, make_learner  # noqa: F401
from maml_tf.rl.evaluation import evaluate, evaluate_run, tune_inner_lr  # noqa: F401
