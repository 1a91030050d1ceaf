"""One policy forward per RLOO step instead of two (bench/lm/rlhf.py, Recipe `one_policy_pass=True`).

TRL 1.16's `RLOOTrainer._generate_and_score_completions` runs the policy over the fresh completions without
gradients (`old_per_token_logps`) before the reward, because RLOO puts the KL to π₀ into the reward:

    reward_i = R(x, y_i) − β·Σ_t (log π(y_it) − log π₀(y_it))        (the policy's log-probs are needed here)

and `compute_loss` then runs the same policy over the same tokens again, with gradients. When a generation serves one
optimiser step only (num_iterations = 1, steps_per_generation = 1, TRL's defaults and this project's), no weight
changes between the two passes, so they compute the same numbers (`old_logps` = `logps`, ratio 1). GRPO's trainer
skips its first pass in that case (it has no KL in the reward); RLOO's cannot, since the reward needs it.

Here the first pass is run *with* gradients (and the entropies the loss logs) and kept; the loss's own call, on the
same rows (TRL shuffles them in between: `row_order`), returns it, rows reordered, instead of recomputing. The step
does one policy forward fewer; the numbers (log-probs, KL, advantages, loss, gradients) are those of TRL's two passes
(tests/test_rollouts.py checks the trained weights are equal). The kept graph holds the activations from the first
pass to the backward, as the loss's own forward would from its start (memory as without activation checkpointing,
which that pass runs without anyway). Any other call (the reference pass, an evaluation, a mismatched batch) runs
as TRL's.
"""

from __future__ import annotations

import torch


def one_policy_pass(trainer_cls):
    """`trainer_cls` (TRL's RLOOTrainer) whose loss reuses the policy pass made for the KL-penalised reward."""

    class OnePolicyPass(trainer_cls):
        def _generate_and_score_completions(self, inputs):
            aligned = self.num_iterations == 1 and self.args.steps_per_generation == 1 and self.model.training
            self._policy_pass = "next" if aligned else None  # the next log-prob call is the policy's
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                if self._policy_pass == "next":  # never made: nothing to keep
                    self._policy_pass = None

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args,
                                               **kwargs):
            state = getattr(self, "_policy_pass", None)
            if state == "next" and not torch.is_grad_enabled() and model is self.model:
                with torch.enable_grad():
                    logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                        model, input_ids, attention_mask, logits_to_keep, *args,
                        **{**kwargs, "compute_entropy": True})
                self._policy_pass = (input_ids, attention_mask, logits_to_keep, logps, entropies, aux)
                return logps.detach(), entropies.detach(), None if aux is None else aux.detach()
            if isinstance(state, tuple) and torch.is_grad_enabled():
                self._policy_pass = None  # used once, or dropped
                ids, mask, keep, logps, entropies, aux = state
                order = row_order(ids, mask, input_ids, attention_mask)
                if keep == logits_to_keep and order is not None and not kwargs.get("compute_aux_loss"):
                    return logps[order], entropies[order], aux
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)

    return OnePolicyPass


def row_order(ids: torch.Tensor, mask: torch.Tensor, new_ids: torch.Tensor, new_mask: torch.Tensor):
    """The index of the row of (ids, mask) that each row of (new_ids, new_mask) is (TRL shuffles the generation batch
    between the reward and the loss), each used once; None when the two batches are not the same rows."""
    if ids.shape != new_ids.shape or mask.shape != new_mask.shape:
        return None
    same = ((new_ids[:, None] == ids[None]) & (new_mask[:, None] == mask[None])).all(-1)  # [new row, old row]
    order, used = [], set()
    for row in same:
        match = next((j for j in row.nonzero().flatten().tolist() if j not in used), None)
        if match is None:
            return None
        order.append(match)
        used.add(match)
    return torch.tensor(order, device=ids.device)
