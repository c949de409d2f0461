"""Training without Ray: :mod:`vreid.train.engine` (``prepare`` / ``train_one_epoch`` / ``fit``), the
recipes (:mod:`vreid.train.recipes`), data (:mod:`vreid.train.data`), validation by the target's protocol
(:mod:`vreid.train.validation`), schedules and checkpoints. Ray Train runs the same engine through
:mod:`vreid.distributed.ray_train`; nothing here imports :mod:`vreid.distributed` (the ``vreid train``
command is :mod:`vreid.distributed.train_cli`, at the edge)."""
