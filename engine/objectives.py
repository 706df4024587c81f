"""Every equation of the course, one function each: SFT, reward model, PPO, DPO, GRPO/RLOO.

Each function carries its formula twice, in two notations that must say the same thing:
in its docstring (plain text, for the reader of the code) and as LaTeX (for the pages).
The LaTeX is given by the `@equation(r"...")` decorator, which stores it in the module-level
dict `LATEX` under the function's name and on the function as `fn.latex`:

    from engine.objectives import LATEX
    st.latex(LATEX["clipped_policy_loss"])

A few formulas the pages show are statistics computed inline (a mean, a standard
deviation): they have a `LATEX` entry and no function, listed at the end of the module.
No formula is written anywhere else; the stage modules (engine.training.sft, engine.training.reward,
engine.training.ppo) import these functions, and the pages render these strings.

Conventions: tensors of per-token quantities are [batch, tokens]; `mask` is 1 on the tokens
that count (response tokens, EOS included) and 0 on padding. Sequence log-probabilities
(DPO) are sums of per-token log-probabilities over the response. Group rewards (GRPO,
RLOO) have the G completions of one prompt on the last dimension: [..., G].
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn.functional as F

from engine.inference.chat import IGNORE_INDEX

LATEX: dict[str, str] = {}

_F = TypeVar("_F", bound=Callable)


def equation(latex: str) -> Callable[[_F], _F]:
    """Register `latex` as the formula of the decorated function (LATEX[name], fn.latex)."""
    def register(fn: _F) -> _F:
        LATEX[fn.__name__] = latex
        fn.latex = latex  # type: ignore[attr-defined]
        return fn
    return register


# ======================================================================================
# Masked statistics
# ======================================================================================
@equation(r"\mathbb{E}_m[x] = \frac{\sum_t m_t\,x_t}{\sum_t m_t}")
def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    """E_mask[x] = Σ m·x / Σ m  (the plain mean without a mask; 0/1 masks of all zeros give 0)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


@equation(r"\mathrm{Var}_m[x] = \mathbb{E}_m\big[(x - \mathbb{E}_m[x])^2\big]")
def masked_var(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Var_mask[x] = E_mask[(x − E_mask[x])²]  (population variance)."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


@equation(r"\hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}}")
def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """x̂ = (x − μ) / sqrt(σ² + ε) over the masked entries of the batch
    (with shift_mean=False the mean is added back: only the scale changes)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out if mask is None else out * mask.to(out.dtype)


@equation(r"\mathrm{EV} = 1 - \frac{\mathrm{Var}[R_t - V(s_t)]}{\mathrm{Var}[R_t]}")
def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """EV = 1 − Var[R − V] / Var[R]: 1 when V predicts the returns, ≤ 0 when it does not
    (NaN when the returns are constant)."""
    var_r = masked_var(returns, mask)
    if float(var_r) == 0.0:
        return torch.tensor(float("nan"))
    return 1.0 - masked_var(returns - values, mask) / var_r


# ======================================================================================
# Language-model log-probabilities (every stage)
# ======================================================================================
@equation(r"\log\pi(a_t|s_t) = \log\mathrm{softmax}(z_t / T)_{a_t}")
def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """log π(a_t | s_t) = log softmax(z_t / T)[a_t]

    with T the sampling temperature: the log-probs must be those of the distribution the
    tokens were sampled from. logits [..., V], tokens [...] → [...] in float32. The one
    log-softmax-and-gather of the engine.
    """
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


@equation(r"H_t = -\sum_{a}\pi_\theta(a|s_t)\log\pi_\theta(a|s_t)")
def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """H(π(·|s_t)) = −Σ_a p_a log p_a = logsumexp(z) − Σ_a p_a z_a,  z = logits / T."""
    z = logits.float() / temperature
    p = F.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


# ======================================================================================
# SFT
# ======================================================================================
@equation(r"\mathrm{NLL}(\theta) = -\sum_{t \in \text{response}} \log p_\theta(y_t \mid x, y_{<t})")
def response_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(−Σ_{t ∈ response} log p_θ(y_t | x, y_<t),  N = number of response tokens).

    Logits at position t predict token t+1, hence the shift; labels −100 (prompt, padding)
    are left out. The sum and the count, for exact token-weighted means over batches.
    """
    shift_labels = labels[:, 1:].to(logits.device)
    mask = shift_labels != IGNORE_INDEX
    if not mask.any():
        zero = logits.new_zeros((), dtype=torch.float32)
        return zero, zero.clone()
    total = -logprobs_from_logits(logits[:, :-1][mask], shift_labels[mask]).sum()
    return total, mask.sum().to(total.dtype)


@equation(r"\mathcal{L}_{SFT}(\theta) = -\frac{1}{N}\sum_{t \in \text{response}} "
          r"\log p_\theta(y_t \mid x, y_{<t})")
def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Completion-only negative log-likelihood, averaged over the response tokens of the batch:

        L_SFT(θ) = − (1/N) Σ_{b,t : labels[b,t+1] ≠ −100} log softmax(logits[b,t])[labels[b,t+1]]

    (N = number of response tokens in the batch; the sum form −Σ log p_θ(y|x) divided by N).
    Prompt and padding tokens carry label −100 and contribute nothing: their logits do not
    change the loss or its gradient. A batch without any response token gives 0 (with a
    gradient graph), not NaN.
    """
    total, n = response_nll(logits, labels)
    return total / n if n > 0 else logits.float().sum() * 0.0


# ======================================================================================
# Reward model (Bradley–Terry)
# ======================================================================================
@equation(r"\mathcal{L}(\phi) = -\log \sigma\big(r_\phi(x, y^+) - r_\phi(x, y^-) - m\big)")
def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                  margin: float | torch.Tensor | None = None) -> torch.Tensor:
    """Bradley–Terry pairwise loss, averaged over pairs:

        L(φ) = −log σ(r_φ(x, y⁺) − r_φ(x, y⁻) − m)     (m = 0 without a margin)

    computed as softplus(−(r⁺ − r⁻ − m)) for numerical stability.
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return F.softplus(-diff).mean()


@equation(r"\mathrm{acc} = \mathbb{E}\big[\mathbb{1}\{r_\phi(x, y^+) > r_\phi(x, y^-)\}\big]")
def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """acc = mean(1[r⁺ > r⁻]): the fraction of pairs ranked right (a tie is not)."""
    return (r_chosen > r_rejected).float().mean()


@equation(r"\mu = \tfrac1n\sum_i r_i,\quad \sigma = \sqrt{\tfrac1n\sum_i (r_i-\mu)^2}")
def reward_stats(rewards: list[float]) -> dict:
    """μ = mean(r), σ = std(r) (population), σ floored at 1e-6 so r̂ stays finite."""
    t = torch.tensor(rewards, dtype=torch.float64)
    std = float(t.std(unbiased=False)) if len(rewards) > 1 else 1.0
    return {"mean": float(t.mean()), "std": max(std, 1e-6)}


@equation(r"\hat r = \frac{r - \mu}{\sigma}")
def normalize_rewards(rewards: torch.Tensor | list, mean: float, std: float):
    """r̂ = (r − μ) / σ with μ, σ measured on reference responses (`reward_stats`)."""
    if isinstance(rewards, list):
        return [(r - mean) / std for r in rewards]
    return (rewards - mean) / std


# ======================================================================================
# KL estimators (Schulman, "Approximating KL divergence", 2020)
# ======================================================================================
# Tokens are sampled from π_θ; with r = π_ref(a_t|s_t) / π_θ(a_t|s_t), each k is an
# estimator of KL(π_θ ‖ π_ref): k1 unbiased with high variance (and can be negative), k2
# biased with low variance, k3 unbiased, low variance and always ≥ 0 (GRPO's).
@equation(r"k_1 = \log\frac{\pi_\theta(a_t|s_t)}{\pi_{\mathrm{ref}}(a_t|s_t)} = -\log r")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k₁ = log π_θ(a_t|s_t) − log π_ref(a_t|s_t) = −log r: unbiased per sampled token."""
    return logp - ref_logp


@equation(r"k_2 = \tfrac12\,(\log r)^2,\quad r = \frac{\pi_{\mathrm{ref}}}{\pi_\theta}")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k₂ = ½·(log r)² = ½·(log π_ref − log π_θ)²: biased, low variance, ≥ 0."""
    return 0.5 * (ref_logp - logp) ** 2


@equation(r"k_3 = (r - 1) - \log r,\quad r = \frac{\pi_{\mathrm{ref}}}{\pi_\theta}")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k₃ = (r − 1) − log r with r = π_ref/π_θ: unbiased, low variance, ≥ 0."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r  # expm1: exact near r = 1, where k₃ ≈ ½(log r)²


@equation(r"\mathrm{KL} \approx \sum_{t=1}^{T}\log\frac{\pi_\theta(y_t|s_t)}"
          r"{\pi_{\mathrm{ref}}(y_t|s_t)}")
def sequence_kl(logp: torch.Tensor, ref_logp: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(π_θ(·|x) ‖ π_ref(·|x)) ≈ Σ_t k₁_t over the response tokens: [B, T] → [B]."""
    k1 = kl_k1(logp, ref_logp)
    return (k1 if mask is None else k1 * mask.to(k1.dtype)).sum(-1)


@equation(r"\mathrm{KL}(\pi_{\theta_{\mathrm{old}}}\|\pi_\theta) \approx "
          r"\mathbb{E}_t\big[\tfrac12(\log r_t(\theta))^2\big]")
def approx_kl(logp_new: torch.Tensor, logp_old: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(π_old ‖ π_θ) ≈ E_t[ ½·(log π_θ − log π_old)² ]  (k₂ between the policy and the one
    that sampled the batch): how far one update moved the policy."""
    return masked_mean(kl_k2(logp_old, logp_new), mask)


# ======================================================================================
# PPO
# ======================================================================================
@equation(r"\begin{aligned}r_t &= -\beta\,\big(\log\pi_\theta(y_t|s_t)"
          r"-\log\pi_{\mathrm{ref}}(y_t|s_t)\big)\\ &\quad + \mathbb{1}[t=T]\,R(x,y)"
          r"\end{aligned}")
def per_token_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                      mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = −β·(log π_θ(a_t|s_t) − log π_ref(a_t|s_t))  on every response token,
    plus the score R(x, y) on the last response token (the EOS, or the last sampled token).

    Returns (rewards, non_score_rewards), both [B, T] and zero on padding.
    """
    mask = mask.to(logp.dtype)
    non_score = -beta * kl_k1(logp, ref_logp) * mask
    rewards = non_score.clone()
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards, non_score


@equation(r"\begin{aligned}\delta_t &= r_t + \gamma V(s_{t+1}) - V(s_t)\\"
          r"\hat A_t &= \sum_{l\ge 0}(\gamma\lambda)^l\,\delta_{t+l} = "
          r"\delta_t + \gamma\lambda\,\hat A_{t+1}\\"
          r"R_t &= \hat A_t + V(s_t)\end{aligned}")
def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016):

        δ_t = r_t + γ·V(s_{t+1}) − V(s_t)           (V = 0 after the last token)
        Â_t = δ_t + γ·λ·Â_{t+1}
        R_t = Â_t + V(s_t)                            (the value targets)

    Returns (advantages, returns), zero on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


@equation(r"r_t(\theta) = \frac{\pi_\theta(y_t|s_t)}{\pi_{\theta_{\mathrm{old}}}(y_t|s_t)}")
def ppo_ratio(logp_new: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """r_t(θ) = π_θ(a_t|s_t) / π_θ_old(a_t|s_t) = exp(log π_θ − log π_θ_old)."""
    return torch.exp(logp_new - logp_old)


@equation(r"\begin{aligned}&L^{\mathrm{CLIP}}(\theta) = \mathbb{E}_t\Big[\max\big(-\hat A_t\,"
          r"r_t(\theta),\\ &\qquad -\hat A_t\,\mathrm{clip}(r_t(\theta),1-\epsilon,1+\epsilon)"
          r"\big)\Big]\end{aligned}")
def clipped_policy_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                        eps: float = 0.2, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L^CLIP(θ) = E_t[ max(−Â_t·r_t(θ), −Â_t·clip(r_t(θ), 1−ε, 1+ε)) ]

    (the negative of PPO's clipped surrogate objective, to be minimised)."""
    ratio = ppo_ratio(logp_new, logp_old)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps)
    return masked_mean(torch.maximum(unclipped, clipped), mask)


@equation(r"\mathbb{E}_t\big[\mathbb{1}\{-\hat A_t\,\mathrm{clip}(r_t) > -\hat A_t\,r_t\}\big]")
def clip_fraction(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                  eps: float = 0.2, mask: torch.Tensor | None = None) -> torch.Tensor:
    """clipfrac = E_t[ 1{−Â_t·clip(r_t, 1−ε, 1+ε) > −Â_t·r_t} ]: the share of tokens where the clip
    binds (their gradient is zero)."""
    ratio = ppo_ratio(logp_new, logp_old)
    binds = (-adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps)) > (-adv * ratio)
    return masked_mean(binds.float(), mask)


@equation(r"\begin{aligned}&L^{V} = \tfrac12\,\mathbb{E}_t\Big[\max\big((V_\phi(s_t)-R_t)^2,"
          r"\\ &\qquad (\mathrm{clip}(V_\phi(s_t),V_{\mathrm{old}}\pm\epsilon_V)-R_t)^2\big)"
          r"\Big]\end{aligned}")
def clipped_value_loss(values_new: torch.Tensor, values_old: torch.Tensor,
                       returns: torch.Tensor, eps: float = 0.2,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """L^V(φ) = ½·E_t[ max((V_φ(s_t) − R_t)², (clip(V_φ(s_t), V_old − ε, V_old + ε) − R_t)²) ]."""
    clipped = values_old + torch.clamp(values_new - values_old, -eps, eps)
    loss = torch.maximum((values_new - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


@equation(r"\mathbb{E}_t\big[\mathbb{1}\{|V_\phi(s_t) - V_{\mathrm{old}}(s_t)| > \epsilon_V\}\big]")
def value_clip_fraction(values_new: torch.Tensor, values_old: torch.Tensor, eps: float = 0.2,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """value clipfrac = E_t[ 1{|V_φ(s_t) − V_old(s_t)| > ε} ]: the share of tokens where
    the value clip binds."""
    return masked_mean(((values_new - values_old).abs() > eps).float(), mask)


@equation(r"\begin{aligned}\beta_{k+1} &= \beta_k\big(1 + e_k\,\tfrac{n_k}{H}\big)\\"
          r"e_k &= \mathrm{clip}\big(\tfrac{\mathrm{KL}_k}{\mathrm{KL}_{\mathrm{target}}}-1,"
          r"\,-0.2,\,0.2\big)\end{aligned}")
def adaptive_kl_update(beta: float, kl: float, target: float, n_steps: int,
                       horizon: int) -> float:
    """Adaptive KL coefficient (Ziegler et al., 2019):

        e_k     = clip(KL_k / KL_target − 1, −0.2, 0.2)
        β_{k+1} = β_k · (1 + e_k · n_k / H)

    with n_k the number of responses in the step and H the horizon: β grows when the
    policy drifts past the target and shrinks when it stays close.
    """
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)


# ======================================================================================
# DPO (Rafailov et al., 2023) and IPO (Azar et al., 2023)
# ======================================================================================
@equation(r"\log\pi_\theta(y|x) = \sum_{t \in \text{response}} \log\pi_\theta(y_t \mid x, y_{<t})")
def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π_θ(y|x) = Σ_{t ∈ response} log π_θ(y_t | x, y_<t), one number per row: [B].

    Same shift as `response_nll` (logits at position t predict token t+1); labels −100
    (prompt, padding) count for nothing. DPO's log-probabilities of whole answers.
    """
    shift_labels = labels[:, 1:].to(logits.device)
    mask = shift_labels != IGNORE_INDEX
    logp = logprobs_from_logits(logits[:, :-1], shift_labels.clamp(min=0))
    return (logp * mask).sum(-1)


@equation(r"h_\theta = \log\frac{\pi_\theta(y^+|x)}{\pi_{\mathrm{ref}}(y^+|x)}"
          r" - \log\frac{\pi_\theta(y^-|x)}{\pi_{\mathrm{ref}}(y^-|x)}")
def dpo_margin(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor,
               ref_logp_chosen: torch.Tensor, ref_logp_rejected: torch.Tensor) -> torch.Tensor:
    """h_θ = (log π_θ(y⁺|x) − log π_ref(y⁺|x)) − (log π_θ(y⁻|x) − log π_ref(y⁻|x)),
    per pair, from sequence log-probabilities."""
    return (logp_chosen - ref_logp_chosen) - (logp_rejected - ref_logp_rejected)


@equation(r"\hat r_\theta(x, y) = \beta\,\log\frac{\pi_\theta(y|x)}{\pi_{\mathrm{ref}}(y|x)}")
def dpo_implicit_reward(logp: torch.Tensor, ref_logp: torch.Tensor,
                        beta: float = 0.1) -> torch.Tensor:
    """r̂_θ(x, y) = β·(log π_θ(y|x) − log π_ref(y|x)): the reward DPO's policy implies."""
    return beta * (logp - ref_logp)


@equation(r"\mathcal{L}_{\mathrm{DPO}} = -(1-\varepsilon)\log\sigma(\beta h_\theta)"
          r" - \varepsilon\log\sigma(-\beta h_\theta)")
def dpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor,
             ref_logp_chosen: torch.Tensor, ref_logp_rejected: torch.Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0) -> torch.Tensor:
    """L_DPO = −log σ(β·h_θ), averaged over pairs, h_θ = `dpo_margin`.

    With label smoothing ε (conservative DPO: each label is wrong with probability ε):
        L = −(1 − ε)·log σ(β·h_θ) − ε·log σ(−β·h_θ).
    At h_θ = 0 (the policy is still the reference) L = log 2 for every ε.
    """
    z = beta * dpo_margin(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses.mean()


@equation(r"\mathcal{L}_{\mathrm{IPO}} = \Big(h_\theta - \frac{1}{2\beta}\Big)^2")
def ipo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor,
             ref_logp_chosen: torch.Tensor, ref_logp_rejected: torch.Tensor,
             beta: float = 0.1) -> torch.Tensor:
    """L_IPO = (h_θ − 1/(2β))², averaged over pairs: a squared loss that pulls the margin to
    a finite target 1/(2β) instead of pushing it to infinity."""
    h = dpo_margin(logp_chosen, logp_rejected, ref_logp_chosen, ref_logp_rejected)
    return ((h - 1.0 / (2.0 * beta)) ** 2).mean()


# ======================================================================================
# Group baselines: GRPO (Shao et al., 2024), Dr. GRPO (Liu et al., 2025), RLOO
# (Ahmadian et al., 2024). Rewards [..., G]: the G completions of one prompt on the last dim.
# ======================================================================================
def _group_size(rewards: torch.Tensor) -> int:
    G = rewards.shape[-1]
    if G < 2:
        raise ValueError(f"a group baseline needs at least 2 completions per prompt, got {G}")
    return G


@equation(r"\hat A_i = \frac{R_i - \mathrm{mean}(R_{1..G})}{\mathrm{std}(R_{1..G}) + \varepsilon}")
def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Â_i = (R_i − mean_j R_j) / (std_j R_j + ε) within each group of G completions
    (std with Bessel's correction, as TRL's GRPOTrainer; ε keeps a group of equal rewards
    at 0 instead of 0/0). Every token of completion i gets Â_i."""
    _group_size(rewards)
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True)
    return (rewards - mean) / (std + eps)


@equation(r"\hat A_i = R_i - \mathrm{mean}(R_{1..G})")
def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Â_i = R_i − mean_j R_j  (Dr. GRPO: no division by the group's std, which favours
    groups that are nearly all right or all wrong)."""
    _group_size(rewards)
    return rewards - rewards.mean(-1, keepdim=True)


@equation(r"b_i = \frac{1}{G-1}\sum_{j\ne i} R_j")
def rloo_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """b_i = (1/(G−1))·Σ_{j≠i} R_j = (Σ_j R_j − R_i) / (G − 1): the mean of the other
    completions' rewards, so the baseline does not depend on completion i itself."""
    G = _group_size(rewards)
    return (rewards.sum(-1, keepdim=True) - rewards) / (G - 1)


@equation(r"\hat A_i = R_i - \frac{1}{G-1}\sum_{j\ne i} R_j")
def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Â_i = R_i − b_i with b_i the leave-one-out baseline (= G/(G−1)·(R_i − mean_j R_j))."""
    return rewards - rloo_baseline(rewards)


@equation(r"R(x, y) = \sum_k w_k\,R_k(x, y)")
def weighted_reward(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """R = Σ_k w_k·R_k: several rewards (rules, a reward model) mixed with fixed weights."""
    return sum(float(weights[name]) * values for name, values in parts.items())


@equation(r"\bar\sigma_G = \frac{1}{B}\sum_{b=1}^{B}\sqrt{\tfrac1G\sum_{i=1}^{G}"
          r"\big(R_{b,i} - \bar R_b\big)^2}")
def group_reward_std(rewards: torch.Tensor) -> torch.Tensor:
    """σ̄_G = mean over the B groups of the (population) std of their G rewards: how much
    signal the group baseline has to work with ([B, G] → scalar)."""
    return rewards.std(-1, unbiased=False).mean()


@equation(r"\frac{1}{B}\sum_{b=1}^{B}\mathbb{1}\big[R_{b,1} = \dots = R_{b,G}\big]")
def zero_signal_fraction(rewards: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """z = (1/B)·Σ_b 1[R_b1 = … = R_bG]: the share of groups whose G rewards are all equal
    (within `tol`); every advantage of such a group is 0, so it teaches nothing but the KL
    term ([B, G] → scalar)."""
    spread = rewards.max(-1).values - rewards.min(-1).values
    return (spread <= tol).float().mean()


@equation(r"\begin{aligned}&\mathcal{L}_{\mathrm{GRPO}}(\theta) = \frac{1}{\sum_i |y_i|}"
          r"\sum_{i,t}\Big[\max\big(-\hat A_i\,r_{i,t}(\theta),\\ &\qquad -\hat A_i\,"
          r"\mathrm{clip}(r_{i,t}(\theta),1-\epsilon,1+\epsilon)\big)"
          r" + \beta\,k_{3,i,t}\Big]\end{aligned}")
def grpo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, ref_logp: torch.Tensor,
              adv: torch.Tensor, mask: torch.Tensor, eps: float = 0.2, beta: float = 0.04,
              normalizer: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = (1/Σ_i|y_i|)·Σ_{i,t}[ max(−Â_i·r_{i,t}, −Â_i·clip(r_{i,t}, 1−ε, 1+ε)) + β·k₃_{i,t} ]

    with Â_i the group advantage of completion i on every one of its tokens ([N] advantages,
    [N, T] log-probs) and k₃ against π_ref. `normalizer` replaces the token count Σ|y_i| by a
    constant (Dr. GRPO: completions × max new tokens, no length bias).
    Returns (loss, policy term, KL term), each divided the same way."""
    a = adv[:, None].expand_as(logp_new) if adv.dim() == 1 else adv
    scale = 1.0 if normalizer is None else float(mask.sum()) / float(normalizer)
    pg = clipped_policy_loss(logp_new, logp_old, a, eps, mask) * scale
    kl = masked_mean(kl_k3(logp_new, ref_logp), mask) * scale
    return pg + beta * kl, pg, kl


@equation(r"\hat b = \frac{\sum_k (x_k-\bar x)(y_k-\bar y)}{\sum_k (x_k-\bar x)^2},\quad "
          r"\mathrm{SE}(\hat b) = \sqrt{\frac{\sum_k \big(y_k-\bar y-\hat b\,(x_k-\bar x)\big)^2"
          r"/(n-2)}{\sum_k (x_k-\bar x)^2}}")
def trend_slope(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """The ordinary least-squares slope of y over x, and its standard error:

        b̂     = Σ_k (x_k − x̄)(y_k − ȳ) / Σ_k (x_k − x̄)²
        SE(b̂) = sqrt( Σ_k (y_k − ȳ − b̂·(x_k − x̄))² / (n − 2) / Σ_k (x_k − x̄)² )

    A run's reward per step (x the step, y the step's mean reward) rose beyond its noise when
    b̂ > 2·SE (about 95% one-sided if the steps' residuals are independent and roughly
    normal). Returns (b̂, SE); (None, None) for fewer than two distinct x, SE None for n = 2
    (no residual left to measure the noise)."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"trend_slope: {n} x values for {len(y)} y values")
    if n < 2:
        return None, None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return None, None
    b = sum((a - mx) * (c - my) for a, c in zip(x, y)) / sxx
    if n < 3:
        return b, None
    rss = sum((c - my - b * (a - mx)) ** 2 for a, c in zip(x, y))
    return b, (rss / (n - 2) / sxx) ** 0.5


TREND_SE = 2.0   # a trend counts as beyond noise when |b̂| > TREND_SE·SE(b̂)


@equation(r"\text{verdict} = \begin{cases}\text{rose} & \hat b > k\,\mathrm{SE}(\hat b)\\ "
          r"\text{fell} & \hat b < -k\,\mathrm{SE}(\hat b)\\ \text{flat} & \text{otherwise}"
          r"\end{cases}")
def trend_verdict(slope: float | None, se: float | None, k: float = TREND_SE) -> str | None:
    """verdict = 'rose' if b̂ > k·SE(b̂), 'fell' if b̂ < −k·SE(b̂), else 'flat' (no trend
    beyond the noise); None when there is no SE to judge by. A zero SE (points exactly on a
    line) counts any non-zero slope."""
    if slope is None or se is None:
        return None
    if slope > k * se:
        return "rose"
    if slope < -k * se:
        return "fell"
    return "flat"


@equation(r"\mathrm{SE}(\bar s) = \sqrt{\frac{\sum_{k=1}^{K}(\bar s_k-\bar s)^2}{K\,(K-1)}},"
          r"\quad \bar s = \frac{1}{K}\sum_{k=1}^{K}\bar s_k,\quad "
          r"\bar s_k = \frac{1}{A_k}\sum_{a=1}^{A_k} s_{k,a}")
def prompt_clustered_mean(scores: list[list[float]]) -> tuple[float | None, float | None]:
    """The mean score of several answers to each of K prompts, and its standard error
    clustered by prompt (the answers to one prompt are not independent draws: they share
    it):

        s̄_k   = (1/A_k)·Σ_a s_{k,a}                   the mean of prompt k's answers
        s̄     = (1/K)·Σ_k s̄_k                        every prompt weighs the same
        SE(s̄) = sqrt( Σ_k (s̄_k − s̄)² / (K·(K − 1)) )   the SE of the K prompt means

    `scores[k]` holds prompt k's answers' scores. The SE counts K prompts, not K·A
    answers: more answers per prompt make each s̄_k less noisy, but only more prompts
    bring the SE of a prompt-to-prompt spread down. Returns (s̄, SE); (None, None) with no
    prompt, SE None with one prompt (no spread to measure)."""
    means = [sum(row) / len(row) for row in scores if len(row)]
    K = len(means)
    if K == 0:
        return None, None
    mean = sum(means) / K
    if K < 2:
        return mean, None
    return mean, (sum((m - mean) ** 2 for m in means) / (K * (K - 1))) ** 0.5


@equation(r"\Delta = \bar s_2 - \bar s_1,\quad "
          r"\mathrm{SE}(\Delta) = \sqrt{\mathrm{SE}_1^2 + \mathrm{SE}_2^2}")
def difference_with_se(first: float, se_first: float | None, second: float,
                       se_second: float | None) -> tuple[float, float | None]:
    """Δ = s̄₂ − s̄₁ and SE(Δ) = sqrt(SE₁² + SE₂²): the difference of two measured means
    and its standard error, the two measured independently. Two held-out points drawn
    with the same random seed are positively correlated, so this SE is then an upper
    bound (a change counted as beyond noise by it is so all the more). Returns (Δ, SE);
    SE None when either SE is unknown."""
    if se_first is None or se_second is None:
        return second - first, None
    return second - first, (se_first ** 2 + se_second ** 2) ** 0.5


# ======================================================================================
# AI feedback checked against people: Cohen's kappa
# ======================================================================================
@equation(r"\kappa = \frac{p_o - p_e}{1 - p_e},\quad p_e = \sum_k p_{k\cdot}\,p_{\cdot k}")
def cohen_kappa(p_o: float, p_e: float) -> float | None:
    """κ = (p_o − p_e) / (1 − p_e): the observed agreement p_o of two raters beyond the
    agreement p_e = Σ_k p_k· p_·k their label frequencies give by chance (1: perfect, 0: as
    chance, < 0: worse). None when p_e = 1 (both raters always give one same label)."""
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


@equation(r"\mathrm{SE}(\kappa) = \sqrt{\frac{p_o(1-p_o)}{n\,(1-p_e)^2}},\quad "
          r"\kappa \pm 1.96\,\mathrm{SE}")
def kappa_standard_error(p_o: float, p_e: float, n: int) -> float | None:
    """SE(κ) = sqrt(p_o(1 − p_o) / (n (1 − p_e)²)), Cohen's (1960) large-sample standard
    error; the 95% interval is κ ± 1.96·SE. None when n = 0 or p_e = 1."""
    if n <= 0 or p_e >= 1.0:
        return None
    return (p_o * (1.0 - p_o) / (n * (1.0 - p_e) ** 2)) ** 0.5


@equation(r"p_o^{\pm} = \frac{\hat p + \frac{z^2}{2n} \pm z\sqrt{\frac{\hat p(1-\hat p)}{n}"
          r" + \frac{z^2}{4n^2}}}{1 + \frac{z^2}{n}},\quad \hat p = \frac{a}{n},\ z = 1.96")
def wilson_interval(agree: int, n: int, z: float = 1.959963984540054
                    ) -> tuple[float, float] | None:
    """p± = (p̂ + z²/2n ± z·sqrt(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n), p̂ = agree/n: Wilson's
    (1927) score interval of a proportion (95% with z = 1.96). Unlike p̂ ± z·SE it keeps its
    width where p̂ is 0 or 1 and n is small (4 of 4: 0.510 to 1). None when n = 0."""
    if n <= 0:
        return None
    p = agree / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * (p * (1.0 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


@equation(r"\kappa^{\pm} = \frac{p_o^{\pm} - p_e}{1 - p_e}")
def kappa_interval(p_o_low: float, p_o_high: float, p_e: float
                   ) -> tuple[float, float] | None:
    """κ± = (p_o± − p_e) / (1 − p_e): an interval of the observed agreement p_o (Wilson's)
    carried to κ through Cohen's formula, which is increasing in p_o, with the chance
    agreement p_e held at its observed value (its own sampling error is not counted: the
    interval is, if anything, a little narrow). Clipped to [−1, 1]; None when p_e = 1."""
    low, high = cohen_kappa(p_o_low, p_e), cohen_kappa(p_o_high, p_e)
    if low is None or high is None:
        return None
    return min(1.0, max(-1.0, low)), min(1.0, max(-1.0, high))


# ======================================================================================
# Formulas the pages show that are inline statistics (no function of their own)
# ======================================================================================
LATEX.update({
    # the objective every RLHF stage maximises
    "rlhf_objective": (r"\max_{\theta}\; \mathbb{E}_{x\sim\mathcal{D},\,y\sim\pi_\theta(\cdot|x)}"
                       r"\big[R(x,y)\big] \;-\; \beta\,\mathrm{KL}\big(\pi_\theta(\cdot|x)\,\|\,"
                       r"\pi_{\mathrm{ref}}(\cdot|x)\big)"),
    "ratio_clip": r"\mathrm{clip}\big(r_t(\theta),\,1-\epsilon,\,1+\epsilon\big)",
    "ratio_stats": r"\bar r,\ \min_t r_t,\ \max_t r_t",
    "score_std": r"\sigma_R = \sqrt{\mathrm{Var}_{i}[R(x_i,y_i)]}",
    "response_length": r"\bar T = \mathbb{E}_i\,|y_i|",
    "eos_fraction": r"\mathbb{E}_i\,\mathbb{1}[\mathrm{EOS} \in y_i]",
    # DPO: how often the implicit reward ranks the pair as the data does
    "dpo_reward_accuracy": (r"\mathrm{acc} = \mathbb{E}\big[\mathbb{1}\{\hat r_\theta(x, y^+)"
                            r" > \hat r_\theta(x, y^-)\}\big]"),
})


# ======================================================================================
# The course's challenges (issue 16): an uncertain reward, best-of-n, diversity
# ======================================================================================
@equation(r"\tilde R(x,y) = \bar r - \lambda\,\sigma_K,\quad \bar r = \frac{1}{K}\sum_{k=1}^{K}"
          r" r_k(x,y),\quad \sigma_K = \sqrt{\frac{1}{K}\sum_{k=1}^{K}\big(r_k(x,y)"
          r" - \bar r\big)^2}")
def conservative_reward(rewards: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """R̃ = r̄ − λ·σ_K over an ensemble of K reward models: r̄ = (1/K) Σ_k r_k and
    σ_K = sqrt((1/K) Σ_k (r_k − r̄)²) (their disagreement, population std), per answer.
    rewards: [K, B] -> [B]. λ = 0 gives the ensemble mean; λ > 0 trusts an answer less the
    more the members disagree on it (an uncertain R, Coste et al. 2023)."""
    mean = rewards.mean(0)
    if lam == 0:
        return mean
    return mean - lam * rewards.std(0, unbiased=False)


@equation(r"\mathrm{KL}_{\mathrm{bon}}(n) = \log n - \frac{n-1}{n}")
def kl_best_of_n(n: int) -> float:
    """KL_bon = log n − (n − 1)/n: the KL divergence from the sampling policy to the
    best-of-n policy (pick the best of n samples by a reward), in nats (Stiennon et al.
    2020; Gao, Schulman and Hilton 2022). 0 at n = 1."""
    import math

    return math.log(n) - (n - 1) / n


@equation(r"w_k = \binom{N-k}{n-1} \Big/ \binom{N}{n},\quad k = 1..N")
def best_of_n_weights(N: int, n: int) -> list[float]:
    """w_k = C(N − k, n − 1) / C(N, n): with N samples ranked by the proxy (k = 1 the best),
    the probability that the k-th best is the best of a random n-subset (the subset holds
    it and its n − 1 others all rank below it). Σ_k w_k = 1."""
    from math import comb

    if not 1 <= n <= N:
        raise ValueError(f"n = {n} must be within 1..N = {N}")
    total = comb(N, n)
    return [comb(N - k, n - 1) / total for k in range(1, N + 1)]


@equation(r"\hat{\mathbb{E}}\big[g(y^{*}_{n})\big] = \sum_{k=1}^{N} w_k\, g\big(y_{(k)}\big)")
def best_of_n_estimate(proxy: list[float], gold: list[float], n: int) -> tuple[float, float]:
    """Ê[g(y*_n)] = Σ_k w_k · g(y_(k)): the expected proxy and gold score of the answer
    best-of-n picks by the proxy, estimated without bias from N ≥ n samples of one prompt
    (y_(k) the k-th best by proxy, w_k = best_of_n_weights(N, n); the mean over all n-subsets
    of the score of each subset's best). Answers tied on the proxy share the mean gold of
    their tie (best-of-n breaks ties at random). Returns (proxy, gold)."""
    N = len(proxy)
    w = best_of_n_weights(N, n)
    order = sorted(range(N), key=lambda i: -proxy[i])
    g = [gold[i] for i in order]
    p = [proxy[i] for i in order]
    start = 0
    while start < N:  # ties on the proxy: each member gets the tie's mean gold
        end = start
        while end + 1 < N and p[end + 1] == p[start]:
            end += 1
        mean = sum(g[start:end + 1]) / (end + 1 - start)
        g[start:end + 1] = [mean] * (end + 1 - start)
        start = end + 1
    return sum(wk * x for wk, x in zip(w, p)), sum(wk * x for wk, x in zip(w, g))


@equation(r"\mathrm{SE}(\bar x) = \frac{s}{\sqrt{P}},\quad s^2 = \frac{1}{P-1}"
          r"\sum_{i=1}^{P}(x_i - \bar x)^2")
def mean_standard_error(xs: list[float]) -> float | None:
    """SE(x̄) = s/√P with s² = Σ_i (x_i − x̄)²/(P − 1): the standard error of the mean of P
    independent values (one per prompt: the prompts are the unit that varies). A difference
    of means measured on the same prompts takes the SE of the per-prompt differences
    (paired). None for fewer than two values (no spread to measure the noise by)."""
    P = len(xs)
    if P < 2:
        return None
    m = sum(xs) / P
    return (sum((x - m) ** 2 for x in xs) / (P - 1) / P) ** 0.5


@equation(r"\mathrm{sim} = \binom{B}{2}^{-1}\sum_{i<j}\frac{|S_i \cap S_j|}{|S_i \cup S_j|}")
def self_similarity(sets: list[set]) -> float:
    """sim = mean over the B(B−1)/2 pairs i < j of the Jaccard similarity |S_i ∩ S_j| /
    |S_i ∪ S_j| of the answers' n-gram sets S_i (1: all answers alike, 0: no n-gram shared;
    0 for fewer than two answers; two empty sets count as alike)."""
    total, pairs = 0.0, 0
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            union = len(sets[i] | sets[j])
            total += len(sets[i] & sets[j]) / union if union else 1.0
            pairs += 1
    return total / pairs if pairs else 0.0


LATEX.update({
    "distinct_n": r"\text{distinct-}n = \frac{|\{\text{unique } n\text{-grams}\}|}"
                  r"{|\{n\text{-grams}\}|}",
})


# ======================================================================================
# What RLHF costs (issue 24): capability retention on a question set
# ======================================================================================
@equation(r"\mathrm{acc}_{\mathrm{cap}} = \frac{1}{n}\sum_{i=1}^{n}"
          r"\mathbb{1}\big[\mathrm{match}(\hat y_i, \mathcal{R}_i)\big]")
def capability_accuracy(correct: list[bool]) -> float | None:
    """acc_cap = (1/n) Σ_i 1[match(ŷ_i, R_i)]: the share of the n questions whose greedy
    answer ŷ_i matches one of the question's references R_i (the rule of
    engine.capability.is_correct). None when there is no question."""
    return sum(1 for c in correct if c) / len(correct) if correct else None


@equation(r"\text{retention} = \begin{cases}\text{lower} & u_m < l_0\\ "
          r"\text{higher} & l_m > u_0\\ \text{same} & \text{otherwise}\end{cases}")
def retention_verdict(low: float, high: float, base_low: float, base_high: float) -> str:
    """retention = 'lower' if u_m < l_0, 'higher' if l_m > u_0, else 'same': a model's 95%
    interval [l_m, u_m] of its accuracy against the base model's [l_0, u_0]. Only intervals
    that do not overlap count as a difference (a conservative test: overlapping intervals
    can still hide a real difference, but never show one that is not there)."""
    if high < base_low:
        return "lower"
    if low > base_high:
        return "higher"
    return "same"
