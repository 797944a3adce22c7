"""nnU-Net v2's default trainer, stopped by a wall-clock budget: the peers comparison's nnU-Net side.

Runs inside ``.venv-peers`` only (it imports nnU-Net, never brainseg). nnU-Net finds it by
name through ``nnUNet_extTrainer`` (this folder), so its own commands train and predict with it::

    nnUNet_extTrainer=scripts/experiments/peers/nnunet_ext PEERS_BUDGET_MINUTES=10 \\
        nnUNetv2_train 961 3d_fullres all -tr nnUNetTrainerBudget -device cpu
    nnUNetv2_predict ... -tr nnUNetTrainerBudget -c 3d_fullres -f all -device cpu [--disable_tta]

Everything nnU-Net plans (network, patch, batch, augmentation, loss, SGD with Nesterov momentum
0.99 at lr 1e-2, deep supervision) is its default ``nnUNetTrainer``'s. What differs
(:mod:`peers_budget` has the rules):

* the epoch loop: epochs of ``PEERS_ITERATIONS_PER_EPOCH`` (default 10, nnU-Net's are 250)
  iterations and one validation batch (nnU-Net's: 50), the budget checked after every
  iteration; the run stops as near ``PEERS_BUDGET_MINUTES`` as whole iterations allow;
* the poly learning rate runs over the budget (set before every iteration), not over 1000 epochs;
* no ``checkpoint_best.pth`` / ``checkpoint_latest.pth`` during the run (each costs a
  second of disk writes on the budget's clock): only ``checkpoint_final.pth``, the weights
  at the end, which the comparison predicts with;
* nnU-Net's final validation (``nnUNetv2_train`` predicts the fold's validation cases with
  mirroring after training; with fold ``all`` those are the training cases) is skipped
  unless ``PEERS_FINAL_VALIDATION=1``: it is no part of the comparison, and on a CPU it
  takes minutes per case;
* ``PEERS_TORCH_THREADS``, when set, replaces the thread count ``nnUNetv2_train -device cpu``
  sets (the machine's CPU count).

It writes ``budget.json`` beside the checkpoint: iterations and epochs reached, the
seconds on the budget's clock, the last learning rate, threads, patch and batch size.
"""

from __future__ import annotations

import json
from os.path import join

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from peers_budget import NNUNET_TOTAL_ITERATIONS, Budget, epochs_for, poly_lr, settings_from_env


class nnUNetTrainerBudget(nnUNetTrainer):  # nnU-Net looks trainers up by this class name
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's own signature
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.peers = settings_from_env()
        self.num_iterations_per_epoch = self.peers["iterations_per_epoch"]
        self.num_val_iterations_per_epoch = 1
        self.num_epochs = epochs_for(NNUNET_TOTAL_ITERATIONS, self.num_iterations_per_epoch)
        if self.peers["threads"] is not None:
            torch.set_num_threads(self.peers["threads"])

    def _set_lr(self, budget: Budget) -> float:
        lr = poly_lr(self.initial_lr, budget.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def run_training(self):
        self.on_train_start()
        budget = Budget(self.peers["seconds"], NNUNET_TOTAL_ITERATIONS)
        self.disable_checkpointing = True  # no best/latest checkpoints on the budget's clock
        budget.start()
        lr = self.initial_lr
        stop = False
        while not stop and self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                lr = self._set_lr(budget)
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                if budget.step_done():
                    stop = True
                    break
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        seconds = budget.elapsed()
        self.disable_checkpointing = False
        record = {
            "trainer": type(self).__name__,
            "iterations": budget.iterations,
            "epochs": self.current_epoch,
            "iterations_per_epoch": self.num_iterations_per_epoch,
            "validation_batches_per_epoch": self.num_val_iterations_per_epoch,
            "seconds": seconds,
            "budget_seconds": budget.seconds,
            "final_lr": lr,
            "initial_lr": self.initial_lr,
            "threads": torch.get_num_threads(),
            "n_proc_DA": get_allowed_n_proc_DA(),
            "patch_size": [int(v) for v in self.configuration_manager.patch_size],
            "batch_size": int(self.batch_size),
            "spacing": [float(v) for v in self.configuration_manager.spacing],
            "configuration": self.configuration_name,
            "fold": self.fold,
            "device": str(self.device),
            "checkpoint": join(self.output_folder, "checkpoint_final.pth"),
        }
        self.on_train_end()
        with open(join(self.output_folder, "budget.json"), "w") as fh:
            json.dump(record, fh, indent=1)
        self.print_to_log_file(
            f"budget: {budget.iterations} iterations in {self.current_epoch} epochs, {seconds:.1f} s of "
            f"{budget.seconds:.0f} s, last lr {lr:.2e}"
        )

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.peers["final_validation"]:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("nnU-Net's final validation skipped (PEERS_FINAL_VALIDATION=1 runs it)")
