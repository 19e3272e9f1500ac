"""Overrides that shrink any preset to a seconds-long CPU run (shared by the pretraining tests)."""

TINY_OVERRIDES = [
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=7",
    "crops.global_size=28", "crops.local_size=14", "crops.num_local=2", "crops.storage_size=28",
    "head.out_dim=64", "head.hidden_dim=32", "head.bottleneck_dim=16",
    "optim.batch_size=32", "optim.epochs=1", "optim.warmup_epochs=0.25", "optim.freeze_last_layer_epochs=0.25",
    "loss.warmup_teacher_temp_epochs=0.5", "loss.ibot_weight=1.0",  # the full DINOv2 loss set
    "run.minutes=null", "run.log_every=2", "run.checkpoint_every_steps=4", "run.eval_every_steps=4",
    "run.eval_train_subset=256", "run.eval_test_subset=128",
    "run.final_eval_train_limit=512", "run.final_eval_test_limit=128", "run.threads=1",
]
