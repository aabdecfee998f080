"""Training: the loop (:mod:`.loop`: a step and an epoch loop), optimizers and schedules from configs
(:mod:`.optim`), checkpoints (:mod:`.checkpoint`), resuming (:mod:`.resume`), Ctrl-C/SIGTERM (:mod:`.interrupt`)
and the CPU fast path (:mod:`.fastpath`). Nothing is imported here: the command line takes :mod:`.interrupt`
before it imports torch."""
