"""Training: config, loop, schedules, checkpoints and distributed setup (`medseg train`)."""
