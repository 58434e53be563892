"""DAFL (Chen et al., ICCV 2019, "Data-Free Learning of Student Networks").

The teacher is a fixed discriminator; a generator z -> image learns to produce inputs
on which the teacher responds like on real data, and the student learns the teacher's
outputs on fresh generator batches.

The algorithm, top to bottom (`adversarial.AlternatingGenerator` does the alternation):
1. Generator: Fast-Datafree's DCGAN-style `models.generator.Generator` (z -> FC ->
   (img/4)² x 2ngf -> BN -> 2 x [up x2, conv3x3, BN, LeakyReLU(0.2)] -> conv3x3 ->
   sigmoid), z ~ N(0, I) of size nz = 512, Adam(lr_g, (b1_g, b2_g)).
2. Generator loss on x = G(z), teacher in eval mode, its logits t and penultimate
   features f (the input of its final linear layer):
       oh_weight * CE(t, argmax t) + balance_weight * sum_c p̄_c log p̄_c
       + act_weight * (-mean |f|),          p̄ = mean_n softmax(t_n)
   (one-hot loss on the teacher's own predictions, information entropy of the batch's
   mean prediction, activation loss; `losses.class_balance`, `losses.activation_loss`).
3. Alternation: `g_steps` generator steps, then `interleave_every` KD steps, each on a
   fresh generator batch (no pool); KD is the shared step, KL(teacher || student) * T²
   at T = 20, without crop/flip (the generator's images go to both networks as they are).

Which code this follows (Fast-Datafree `datafree_kd.py --method dafl`, its
`GenerativeSynthesizer` and scripts/dafl_cifar.sh, the DAFL baseline of the Fast paper),
and where the original DAFL code (huawei-noah/Efficient-Computing,
Data-Efficient-Model-Compression/DAFL/DAFL-train.py, and its README's CIFAR-10 command)
differs:
- Alternation: Fast-Datafree takes one generator step, then 5 KD steps on fresh
  samples (400 KD and 80 generator steps per epoch, 200 epochs). The original updates
  generator and student *together on the same batch* (one backward through generator
  loss + KD loss, the student's input detached), 120 steps per epoch for 2000 epochs.
  The fresh-sample alternation is what the loop's interleave hook runs.
- Hyperparameters: Fast-Datafree's CIFAR script (batch 256, nz 512, ngf 64, Adam 1e-3
  with betas (0.5, 0.999), oh 1, balance 20, act 1e-3, KD at T = 20 with SGD lr 0.1,
  weight decay 1e-4, cosine to 2e-4). The original CIFAR-10 command: batch 1024,
  latent 1000, Adam lr 0.02 (default betas), oh 0.05, ie 5, a 0.01, KD at T = 1, SGD
  lr 0.1 (weight decay 5e-4, step decay).
- Information entropy: natural log, as Fast-Datafree; the original uses log10 (its
  weight 5 on log10 is 5 / ln 10 ≈ 2.2 on the natural-log value).
- Generator: Fast-Datafree's (sigmoid output in [0, 1], then the teacher's
  normalization). The original's ends in tanh and an affine-free BatchNorm, i.e. emits
  the teacher's normalized input directly: `generator_output="normalized"` (without the
  original's BN eps of 0.8 in the hidden layers). On the CPU config it stayed at chance
  as the default does (experiments/results/dafl_dfad_cpu_retune_probes.json).
- In Fast-Datafree the synthesizer is built with `student=teacher` (issue #11 of
  zju-vipa/Fast-Datafree); DAFL never uses the student there (adv = 0), so this is moot.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nayer_jax import losses
from nayer_jax.classifier import Classifier
from nayer_jax.errors import InputError
from nayer_jax.synthesis import adversarial
from nayer_jax.synthesis.adversarial import AlternatingGenerator, GeneratorSettings


# ------------------------------------------------------------------------------ settings

@dataclasses.dataclass(frozen=True)
class DaflSettings(GeneratorSettings):
    """scripts/dafl_cifar.sh of Fast-Datafree (see the module docstring)."""
    nz: int = 512
    oh_weight: float = 1.0
    balance_weight: float = 20.0
    act_weight: float = 1e-3

    POSITIVE: ClassVar[tuple[str, ...]] = GeneratorSettings.POSITIVE
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = (*GeneratorSettings.NON_NEGATIVE, "oh_weight",
                                               "balance_weight", "act_weight")


def default_config():
    """DAFL as in Fast-Datafree's CIFAR script: the alternating methods' budget
    (`adversarial.default_config`), T 20, plus `DaflSettings`."""
    c = adversarial.default_config(DaflSettings, "dafl")
    c.temperature = 20.0
    return c


# ------------------------------------------------------------------------------ losses

def apply_with_features(model: nn.Module, variables, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eval-mode (logits, penultimate features): the features are the input of the model's
    last `nn.Dense` call (every classifier of the zoo ends in pool -> one linear layer,
    so this is the pooled feature vector, torch's `return_features=True`)."""
    captured = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            captured.append(args[0] if args else kwargs["inputs"])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, x, train=False)
    if not captured:
        raise InputError(f"{type(model).__name__}: no nn.Dense layer, so no penultimate "
                         "features for DAFL's activation loss")
    return logits, captured[-1]


def dafl_loss(logits: jax.Array, features: jax.Array, oh_weight: float,
              balance_weight: float, act_weight: float) -> tuple[jax.Array, dict]:
    """(weighted sum, terms) of DAFL's generator loss from the teacher's logits/features."""
    pseudo = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1])
    oh = losses.soft_cross_entropy(logits, jax.lax.stop_gradient(pseudo))
    balance = losses.class_balance(logits)
    act = losses.activation_loss(features)
    loss = oh_weight * oh + balance_weight * balance + act_weight * act
    return loss, {"loss": loss, "oh": oh, "balance": balance, "act": act}


# ------------------------------------------------------------------------------ method

class Dafl(AlternatingGenerator):
    """DAFL bound to a teacher (the student is only trained by the shared KD step)."""

    METRICS = ("loss", "oh", "balance", "act")


    def generator_loss(self, x, teacher_vars, student_vars):
        del student_vars
        logits, features = apply_with_features(self.teacher.model, teacher_vars, x)
        return dafl_loss(logits, features, self.s.oh_weight, self.s.balance_weight,
                         self.s.act_weight)


def build(config, teacher: Classifier, student_model: nn.Module, rng: jax.Array, mesh=None):
    """DAFL method + initial state (a fresh generator and its Adam)."""
    return adversarial.build(Dafl, DaflSettings, config, teacher, student_model, rng, mesh)
