"""Progressive delivery: rollout plans, their analysis, and the loop that decides (README
"Rollouts"). Import the modules themselves; this package's root stays light, because the
config (`gateway.settings`) reads the plan's shape from `gateway.rollout.plan`."""
