"""The early-exit methods DE³-BERT is compared with, one file each, behind `ExitPolicy`."""
