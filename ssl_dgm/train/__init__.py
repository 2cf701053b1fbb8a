"""Training: the stage pipeline (`pipeline.run`) and what it is built from.

  callbacks   checkpoints, history rows, schedules, the NaN guard, progress lines
  distribute  tf.distribute strategies and the multi-worker fit loop
  evaluation  classification error on a split, binarised and on grey levels
  pipeline    checks, then the M1 stage, M1's head or the M2 stage, then results
"""
