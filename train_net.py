#!/usr/bin/env python
"""
Train and evaluate FCOS with Detectron2's DefaultTrainer.

    python train_net.py --config-file configs/FCOS_R50_1x.yaml --num-gpus 8
    python train_net.py --config-file configs/FCOS_R50_1x.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file configs/quickstart.yaml            # CPU, built-in data
    python train_net.py --config-file configs/quickstart.yaml --eval-only \
        MODEL.WEIGHTS output/quickstart/model_final.pth TEST.AUG.ENABLED True  # + TTA

On a machine without a GPU, the model runs on the CPU and ``--num-gpus N`` starts N CPU
worker processes (GLOO). Started by torchrun or SLURM's srun, each process is one worker of
the group they describe (docs/distributed.md):

    torchrun --nproc-per-node 8 train_net.py --config-file configs/FCOS_R50_1x.yaml
    srun python train_net.py --config-file configs/FCOS_R50_1x.yaml --resume
"""

import os
import sys

from detectron2.evaluation import verify_results
from detectron2.utils import comm

import fcos_d2  # noqa: F401  (registers the FCOS model and the built-in datasets)
from fcos_d2 import InputError
from fcos_d2.engine import FCOSCheckpointer, Trainer, argument_parser, launch, setup


def main(args):
    cfg = setup(args)
    if args.eval_only:
        weights = cfg.MODEL.WEIGHTS
        if not weights:
            raise InputError(
                "--eval-only needs weights to evaluate: MODEL.WEIGHTS path/to/model.pth"
            )
        if "://" not in weights and not os.path.isfile(weights):
            raise InputError(f"MODEL.WEIGHTS not found: {weights}")
        model = Trainer.build_model(cfg)
        FCOSCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True).resume_or_load(
            weights, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:  # as Detectron2's tools/train_net.py: "<task>_TTA" keys
            results = {**(results or {}), **Trainer.test_with_TTA(cfg, model)}
        if comm.is_main_process():
            verify_results(cfg, results)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    # With TEST.AUG.ENABLED the trainer's hooks also evaluate with TTA after training.
    return trainer.train()


if __name__ == "__main__":
    args = argument_parser().parse_args()
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except InputError as e:
        print(f"train_net.py: error: {e}", file=sys.stderr)
        sys.exit(2)
