"""DFAD (Fang et al., 2019, "Data-Free Adversarial Distillation"): a min-max game.

A generator poses "hard samples": it maximizes the discrepancy between student and
teacher, which the student minimizes on fresh generator batches. The discrepancy is the
mean absolute difference of the logits (torch `F.l1_loss`), an upper-bound surrogate of
the model discrepancy the paper argues for.

The algorithm, top to bottom (`adversarial.AlternatingGenerator` does the alternation):
1. Generator: Fast-Datafree's DCGAN-style `models.generator.Generator` (sigmoid output
   in [0, 1], then the teacher's normalization), z ~ N(0, I) of size nz = 256,
   Adam(lr_g, (b1_g, b2_g)).
2. Generator step: minimize  -L1(student(x), teacher(x))  on x = G(z), the gradient
   flowing through both networks into the generator (teacher in eval mode; the student
   with its batch BN statistics, as the reference's `student.train()`, or its running
   ones with `student_bn_train=False`).
3. Student steps: `interleave_every` = 5 steps of the shared KD step with
   `kd_loss="l1"` (mean |s - t|) on fresh generator batches, no crop/flip, no pool.
One round: `g_steps` = 1 generator step, then 5 student steps; 400 student steps per
epoch, 200 epochs, SGD lr 0.1 cosine to 2e-4, batch 256.

Which code this follows, and where the two reference codes differ:
- The adversarial term: the DFAD authors' code (VainF/Data-Free-Adversarial-Distillation,
  DFAD_cifar.py). Fast-Datafree (`datafree_kd.py --method dfad`) builds its
  `GenerativeSynthesizer` with `student=teacher` (zju-vipa/Fast-Datafree issue #11), so
  its generator loss is -L1(teacher(x), teacher(x)) = 0 with zero gradient: the
  generator never moves and its "DFAD" is KD on a fixed random generator. That is not
  followed.
- Student loss: L1 on logits (paper, VainF). Fast-Datafree's student loss for dfad is
  its KD criterion, KL at T = 1 (--T 1); `temperature` is set to 1 here for the record.
- Order: Fast-Datafree's (generator step, then the 5 student steps; the loop's hook runs
  the generator step before every 5th KD step). VainF runs the 5 student steps first;
  the rounds are the same after the first.
- Budgets and optimizers: Fast-Datafree's scripts/dfad_cifar.sh (batch 256, 400 KD steps
  per epoch, 200 epochs, lr 0.1, weight decay 1e-4, generator Adam 1e-3 with betas
  (0.5, 0.999), nz 256, ngf 64, its sigmoid generator). VainF: 50 rounds per "epoch",
  500 epochs, weight decay 5e-4, Adam 1e-3 with default betas (0.9, 0.999), both LRs
  decayed alike (--scheduler; here `lr_g_follows_student`, whereas Fast-Datafree keeps
  lr_g constant), and a generator ending in tanh + affine-free BN (normalized output),
  offered as `generator_output="normalized"`. Alone it stayed at chance for 5 CPU
  epochs; VainF's settings together leave chance where Fast-Datafree's do not, and
  with a constant lr_g the student collapsed (41% -> 23%) once its own LR had decayed,
  so the CPU config (`dfad_cpu_cifar10_r32_r20.py`) uses all of them; the CIFAR configs
  keep Fast-Datafree's.
- The student's BN running statistics: in VainF the generator step's student forward
  (train mode) also moves the student's running statistics by one momentum step on
  the generator's batch; the loop's interleave hook returns only the method state, so
  here that forward uses the batch statistics and leaves the running ones untouched
  (the 5 KD steps of every round update them as usual).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax

from nayer_jax.classifier import Classifier
from nayer_jax.synthesis import adversarial
from nayer_jax.synthesis.adversarial import AlternatingGenerator, GeneratorSettings


# ------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class DfadSettings(GeneratorSettings):
    """scripts/dfad_cifar.sh of Fast-Datafree (see the module docstring)."""
    adv_weight: float = 1.0          # scale of the generator's -L1 (--adv)
    student_bn_train: bool = True    # generator step: student BN with batch statistics

    POSITIVE: ClassVar[tuple[str, ...]] = (*GeneratorSettings.POSITIVE, "adv_weight")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = GeneratorSettings.NON_NEGATIVE


def default_config():
    """DFAD: the alternating methods' budget (`adversarial.default_config`) with the L1
    student loss, plus `DfadSettings`."""
    c = adversarial.default_config(DfadSettings, "dfad")
    c.kd_loss = "l1"
    c.temperature = 1.0
    return c


class Dfad(AlternatingGenerator):
    """DFAD: the generator maximizes the student-teacher L1 the KD step minimizes."""

    METRICS = ("l1",)  # the discrepancy on the generator's batch, before its step

    def student_logits(self, student_vars, x):
        if self.s.student_bn_train:  # batch statistics; the running ones are not updated
            return self.student_model.apply(student_vars, x, train=True,
                                            mutable=["batch_stats"])[0]
        return self.student_model.apply(student_vars, x, train=False)

    def generator_loss(self, x, teacher_vars, student_vars):
        t_logits = self.teacher.model.apply(teacher_vars, x, train=False)
        from nayer_jax import distill

        l1_loss = distill.kd_objective("l1", 1.0)  # the KD step's own discrepancy
        l1 = l1_loss(self.student_logits(student_vars, x), t_logits)
        return -self.s.adv_weight * l1, {"l1": l1}


def build(config, teacher: Classifier, student_model: nn.Module, rng: jax.Array, mesh=None):
    """DFAD method + initial state (a fresh generator and its Adam)."""
    return adversarial.build(Dfad, DfadSettings, config, teacher, student_model, rng, mesh)
