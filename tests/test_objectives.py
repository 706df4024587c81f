"""engine.objectives: every equation on small tensors whose values are worked out by hand
here, and the pages draw their formulas from its LATEX table only."""
from __future__ import annotations

import ast
import inspect
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import objectives as O

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)


def approx(values, abs=1e-6):
    return pytest.approx(values, abs=abs)


# ======================================================================================
# The LaTeX table
# ======================================================================================
def test_every_equation_has_its_formula_in_docstring_and_latex():
    functions = [f for name, f in vars(O).items() if inspect.isfunction(f)
                 and f.__module__ == O.__name__ and not name.startswith("_")
                 and name != "equation"]
    assert len(functions) >= 30
    for f in functions:
        assert f.__name__ in O.LATEX, f"{f.__name__} has no LaTeX"
        assert f.latex == O.LATEX[f.__name__]
        assert f.__doc__ and ("=" in f.__doc__ or "≈" in f.__doc__), f.__name__
    for name in ("sft_loss", "pairwise_loss", "kl_k1", "kl_k2", "kl_k3", "gae_advantages",
                 "clipped_policy_loss", "adaptive_kl_update", "dpo_loss", "ipo_loss",
                 "grpo_advantages", "dr_grpo_advantages", "rloo_baseline", "rlhf_objective"):
        assert O.LATEX[name].strip()
    # braces balance in every formula (a cut string would break KaTeX silently)
    for name, tex in O.LATEX.items():
        assert tex.count("{") == tex.count("}"), name


# the quantity each equation defines, as its docstring writes it and as its LaTeX does (the
# left-hand side where the LaTeX has one): the two notations must name the same thing
QUANTITY = {
    "masked_mean": ("E_mask[x]", r"\mathbb{E}_m[x]"),
    "masked_var": ("Var_mask[x]", r"\mathrm{Var}_m[x]"),
    "whiten": ("x̂", r"\hat x"),
    "explained_variance": ("EV", r"\mathrm{EV}"),
    "logprobs_from_logits": ("log π(a_t | s_t)", r"\log\pi(a_t|s_t)"),
    "entropy_from_logits": ("H(π(·|s_t))", "H_t"),
    "response_nll": ("−Σ_{t ∈ response} log p_θ(y_t | x, y_<t)", r"\mathrm{NLL}(\theta)"),
    "sft_loss": ("L_SFT(θ)", r"\mathcal{L}_{SFT}(\theta)"),
    "pairwise_loss": ("L(φ)", r"\mathcal{L}(\phi)"),
    "pairwise_accuracy": ("acc", r"\mathrm{acc}"),
    "reward_stats": ("μ = mean(r), σ = std(r)", r"\mu"),
    "normalize_rewards": ("r̂", r"\hat r"),
    "kl_k1": ("k₁", "k_1"),
    "kl_k2": ("k₂", "k_2"),
    "kl_k3": ("k₃", "k_3"),
    "sequence_kl": ("KL(π_θ(·|x) ‖ π_ref(·|x))", r"\mathrm{KL}"),
    "approx_kl": ("KL(π_old ‖ π_θ)", r"\mathrm{KL}(\pi_{\theta_{\mathrm{old}}}\|\pi_\theta)"),
    "per_token_rewards": ("r_t", "r_t"),
    "gae_advantages": ("δ_t", r"\delta_t"),
    "ppo_ratio": ("r_t(θ)", r"r_t(\theta)"),
    "clipped_policy_loss": ("L^CLIP(θ)", r"L^{\mathrm{CLIP}}(\theta)"),
    "clip_fraction": ("E_t[ 1{−Â_t·clip(r_t", r"\mathbb{E}_t\big[\mathbb{1}\{-\hat A_t\,\mathrm{clip}(r_t)"),
    "clipped_value_loss": ("L^V(φ)", "L^{V}"),
    "value_clip_fraction": ("E_t[ 1{|V_φ(s_t) − V_old(s_t)| > ε}", r"\mathbb{E}_t\big[\mathbb{1}\{|V_\phi(s_t) - V_{\mathrm{old}}(s_t)| > \epsilon_V\}"),
    "adaptive_kl_update": ("β_{k+1}", r"\beta_{k+1}"),
    "sequence_logprobs": ("log π_θ(y|x)", r"\log\pi_\theta(y|x)"),
    "dpo_margin": ("h_θ", r"h_\theta"),
    "dpo_implicit_reward": ("r̂_θ(x, y)", r"\hat r_\theta(x, y)"),
    "dpo_loss": ("L_DPO", r"\mathcal{L}_{\mathrm{DPO}}"),
    "ipo_loss": ("L_IPO", r"\mathcal{L}_{\mathrm{IPO}}"),
    "grpo_advantages": ("Â_i", r"\hat A_i"),
    "dr_grpo_advantages": ("Â_i", r"\hat A_i"),
    "rloo_baseline": ("b_i", "b_i"),
    "rloo_advantages": ("Â_i", r"\hat A_i"),
    "weighted_reward": ("R = Σ_k w_k·R_k", "R(x, y)"),
    "group_reward_std": ("σ̄_G", r"\bar\sigma_G"),
    "zero_signal_fraction": ("(1/B)·Σ_b 1[R_b1 = … = R_bG]", r"\frac{1}{B}\sum_{b=1}^{B}\mathbb{1}\big[R_{b,1} = \dots = R_{b,G}\big]"),
    "grpo_loss": ("L = (1/Σ_i|y_i|)", r"\mathcal{L}_{\mathrm{GRPO}}(\theta)"),
    "cohen_kappa": ("κ", r"\kappa"),
    "kappa_standard_error": ("SE(κ)", r"\mathrm{SE}(\kappa)"),
    "conservative_reward": ("R̃", r"\tilde R(x,y)"),
    "kl_best_of_n": ("KL_bon", r"\mathrm{KL}_{\mathrm{bon}}(n)"),
    "best_of_n_weights": ("w_k", "w_k"),
    "best_of_n_estimate": ("Ê[g(y*_n)]", r"\hat{\mathbb{E}}\big[g(y^{*}_{n})\big]"),
    "mean_standard_error": ("SE(x̄)", r"\mathrm{SE}(\bar x)"),
    "self_similarity": ("sim", r"\mathrm{sim}"),
    "wilson_interval": ("p±", r"p_o^{\pm}"),
    "kappa_interval": ("κ±", r"\kappa^{\pm}"),
    "trend_slope": ("b̂", r"\hat b"),
    "trend_verdict": ("verdict", r"\text{verdict}"),
    "capability_accuracy": ("acc_cap", r"\mathrm{acc}_{\mathrm{cap}}"),
    "retention_verdict": ("retention", r"\text{retention}"),
    "prompt_clustered_mean": ("SE(s̄)", r"\mathrm{SE}(\bar s)"),
    "difference_with_se": ("Δ", r"\Delta"),
}


def _left_side(tex: str) -> str:
    """The LaTeX before its first '=' or '\\approx' outside braces and brackets (all of it
    when it has neither: a formula that is only the expression of its quantity)."""
    depth = 0
    for i, ch in enumerate(tex):
        depth += ch in "{[" and 1 or ch in "}]" and -1 or 0
        if depth == 0 and (ch == "=" or tex.startswith(r"\approx", i)):
            return tex[:i]
    return tex


def test_docstring_and_latex_name_the_same_quantity():
    functions = {name for name, f in vars(O).items() if inspect.isfunction(f)
                 and f.__module__ == O.__name__ and not name.startswith("_")
                 and name != "equation"}
    assert functions == set(QUANTITY), "an equation without its quantity in QUANTITY (or gone)"
    for name, (plain, tex) in QUANTITY.items():
        assert plain in getattr(O, name).__doc__, f"{name}: the docstring does not name {plain}"
        assert tex in _left_side(O.LATEX[name]), f"{name}: the LaTeX does not define {tex}"


KATEX = sorted((Path(__import__("streamlit").__file__).parent / "static").rglob("katex.*.js"))


@pytest.mark.skipif(not KATEX or not shutil.which("node"),
                    reason="needs node and the KaTeX bundle Streamlit ships")
def test_every_formula_renders_with_the_katex_the_pages_use(tmp_path):
    """Each LATEX entry through KaTeX itself (Streamlit's own copy, the one st.latex uses),
    with errors raised: a formula KaTeX cannot parse shows as red text on a page."""
    module = tmp_path / "katex.mjs"
    shutil.copy(KATEX[0], module)
    script = tmp_path / "render.mjs"
    script.write_text(
        'import katex from "./katex.mjs";\n'
        'import { readFileSync } from "node:fs";\n'
        'const formulas = JSON.parse(readFileSync(0, "utf8"));\n'
        'const errors = {};\n'
        'for (const [name, tex] of Object.entries(formulas)) {\n'
        '  try { katex.renderToString(tex, {throwOnError: true, displayMode: true}); }\n'
        '  catch (e) { errors[name] = String(e.message); }\n'
        '}\n'
        'console.log(JSON.stringify({rendered: Object.keys(formulas).length, errors}));\n')
    out = subprocess.run(["node", str(script)], input=json.dumps(O.LATEX), text=True,
                         capture_output=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["errors"] == {}
    assert result["rendered"] == len(O.LATEX) >= 40


def _formula_args(tree: ast.AST):
    """The formula argument of every st.latex(...) and _chart_with_formula(...) call, and
    each formula a StagePage(...) lists under its intro."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else \
            getattr(node.func, "id", "")
        if name == "latex" and node.args:
            yield node.args[0]
        elif name == "_chart_with_formula" and len(node.args) >= 3:
            yield node.args[2]
        elif name == "StagePage":
            listed = node.args[2] if len(node.args) >= 3 else next(
                (k.value for k in node.keywords if k.arg == "formulas"), None)
            yield from listed.elts if isinstance(listed, ast.List) else ()


def test_pages_render_formulas_from_the_latex_table_only():
    seen = 0
    for path in sorted((ROOT / "views").glob("*.py")) + sorted((ROOT / "ui").glob("*.py")):
        tree = ast.parse(path.read_text())
        for arg in _formula_args(tree):
            if isinstance(arg, ast.Name):  # the helper's own parameter
                continue
            head = arg.left if isinstance(arg, ast.BinOp) else arg
            assert isinstance(head, ast.Subscript) and getattr(head.value, "id", "") == "LATEX", \
                f"{path.name}:{arg.lineno}: a formula written in the page"
            assert head.slice.value in O.LATEX, f"{path.name}: unknown {head.slice.value}"
            seen += 1
    assert seen >= 15


# ======================================================================================
# Masked statistics
# ======================================================================================
def test_masked_mean_var_and_whiten():
    x = torch.tensor([[1.0, 2.0], [3.0, 10.0]])
    m = torch.tensor([[1, 1], [1, 0]])
    assert O.masked_mean(x, m).item() == approx(2.0)              # (1 + 2 + 3) / 3
    assert O.masked_mean(x, m, dim=1).tolist() == approx([1.5, 3.0])
    assert O.masked_var(x, m).item() == approx(2 / 3)              # (1 + 0 + 1) / 3
    assert O.masked_mean(x).item() == approx(4.0)
    # whiten: mean 2, variance 1 on the kept entries; padding stays 0
    y = torch.tensor([[1.0, 3.0, 100.0]])
    ym = torch.tensor([[1, 1, 0]])
    assert O.whiten(y, ym, eps=0.0).tolist() == [approx([-1.0, 1.0, 0.0])]
    assert O.whiten(y, ym, shift_mean=False, eps=0.0).tolist() == [approx([1.0, 3.0, 0.0])]
    z = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5, variance 1.25
    assert O.whiten(z, eps=0.0).tolist() == approx([(v - 2.5) / math.sqrt(1.25) for v in
                                                     (1, 2, 3, 4)])


def test_explained_variance():
    ret = torch.tensor([1.0, 2.0, 3.0])  # Var = 2/3
    assert O.explained_variance(ret, ret).item() == approx(1.0)
    assert O.explained_variance(torch.full((3,), 2.0), ret).item() == approx(0.0)
    # residuals (0, 0, −1): Var = 2/9, so EV = 1 − (2/9)/(2/3) = 2/3
    assert O.explained_variance(torch.tensor([1.0, 2.0, 4.0]), ret).item() == approx(2 / 3)
    assert math.isnan(O.explained_variance(ret, torch.ones(3)).item())


# ======================================================================================
# Log-probabilities, entropy, SFT
# ======================================================================================
def test_logprobs_from_logits_and_entropy():
    p = torch.tensor([0.5, 0.25, 0.25])
    logits = p.log()[None, None]                  # [1, 1, 3]
    assert O.logprobs_from_logits(logits, torch.tensor([[1]])).item() == approx(math.log(0.25))
    # T = 2: softmax(log p / 2) ∝ √p, so p₁ = 0.5 / (√0.5 + 0.5 + 0.5)
    assert O.logprobs_from_logits(logits, torch.tensor([[1]]), 2.0).item() == approx(
        math.log(0.5 / (math.sqrt(0.5) + 1.0)))
    # H = 0.5·ln 2 + 2·0.25·ln 4 = 1.5·ln 2
    assert O.entropy_from_logits(logits).item() == approx(1.5 * LN2)
    assert O.entropy_from_logits(torch.zeros(5)).item() == approx(math.log(5))


def test_sft_nll_counts_response_tokens_only():
    logits = torch.stack([torch.tensor([0.5, 0.25, 0.25]).log(),
                          torch.tensor([0.2, 0.3, 0.5]).log(),
                          torch.tensor([9.0, -9.0, 0.0])])[None].requires_grad_()  # [1, 3, 3]
    labels = torch.tensor([[-100, 1, 2]])  # position 0 predicts 1, position 1 predicts 2
    total, n = O.response_nll(logits, labels)
    assert total.item() == approx(math.log(4) + math.log(2)) and n.item() == 2
    loss = O.sft_loss(logits, labels)
    assert loss.item() == approx(1.5 * LN2)
    loss.backward()
    assert torch.equal(logits.grad[0, 2], torch.zeros(3))  # the last position predicts nothing
    # the same as torch's cross-entropy with ignore_index on a random batch
    g = torch.Generator().manual_seed(0)
    big = torch.randn(2, 6, 11, generator=g)
    lab = torch.randint(0, 11, (2, 6), generator=g)
    lab[:, :2] = -100
    ref = F.cross_entropy(big[:, :-1].reshape(-1, 11), lab[:, 1:].reshape(-1), ignore_index=-100)
    assert O.sft_loss(big, lab).item() == approx(ref.item(), abs=1e-5)
    # no response token: 0, not NaN, with a graph that backpropagates
    empty = O.sft_loss(logits, torch.full((1, 3), -100))
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    # a position that predicts a prompt token changes nothing and gets no gradient
    prompt = torch.zeros(1, 4, 4)
    prompt[0, 0] = torch.tensor([9.0, -3.0, 5.0, 1.0])   # predicts label −100
    prompt.requires_grad_()
    two = torch.tensor([[-100, -100, 2, 3]])
    loss = O.sft_loss(prompt, two)
    assert loss.item() == approx(math.log(4))
    loss.backward()
    assert prompt.grad[0, 0].abs().sum() == 0 and prompt.grad[0, 1].abs().sum() > 0


# ======================================================================================
# Reward model
# ======================================================================================
def test_bradley_terry_loss_accuracy_and_normalisation():
    rc, rr = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    assert O.pairwise_loss(rc, rr).item() == approx((math.log(1 + math.exp(-1)) + LN2) / 2)
    # margin 1: diffs become (0, −1)
    assert O.pairwise_loss(rc, rr, 1.0).item() == approx((LN2 + math.log(1 + math.e)) / 2)
    assert O.pairwise_accuracy(rc, rr).item() == 0.5  # a tie is not ranked right
    stats = O.reward_stats([1.0, 2.0, 3.0])
    assert stats["mean"] == approx(2.0) and stats["std"] == approx(math.sqrt(2 / 3))
    assert O.normalize_rewards([1.0, 3.0], 2.0, 0.5) == approx([-2.0, 2.0])
    assert O.normalize_rewards(torch.tensor([4.0]), 2.0, 0.5).tolist() == approx([4.0])
    assert O.reward_stats([5.0])["std"] == 1.0 and O.reward_stats([2.0, 2.0])["std"] == 1e-6
    # a badly wrong pair stays finite (softplus, not log σ): −log σ(−200) = 200
    assert O.pairwise_loss(torch.tensor([-100.0]), torch.tensor([100.0])).item() == approx(200.0)
    # the gradient: ∂L/∂r⁺ = −(1 − σ(Δ)) = −σ(−Δ), at Δ = 2
    r = torch.tensor([2.0], requires_grad=True)
    O.pairwise_loss(r, torch.tensor([0.0])).backward()
    assert r.grad.item() == approx(-1 / (1 + math.exp(2)))
    assert O.pairwise_accuracy(torch.tensor([1.0, 0.0, 3.0]),
                               torch.tensor([0.0, 1.0, 3.0])).item() == approx(1 / 3)


# ======================================================================================
# KL estimators
# ======================================================================================
def test_kl_estimators_on_one_token():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # r = 0.5
    assert O.kl_k1(logp, ref).item() == approx(LN2)               # −log r
    assert O.kl_k2(logp, ref).item() == approx(0.5 * LN2 ** 2)    # ½ (log r)²
    assert O.kl_k3(logp, ref).item() == approx(-0.5 + LN2)        # (r − 1) − log r


def test_k1_and_k3_are_unbiased_and_k3_is_never_negative():
    """Sampling from π_θ = (½, ½) with π_ref = (¼, ¾): E[k₁] = E[k₃] = KL(π_θ‖π_ref)."""
    pi, ref = torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    for k in (O.kl_k1, O.kl_k3):
        assert float((pi * k(pi.log(), ref.log())).sum()) == approx(kl)
    assert float((pi * O.kl_k2(pi.log(), ref.log())).sum()) != approx(kl)  # k₂ is biased
    assert (O.kl_k1(pi.log(), ref.log()) < 0).any()                        # k₁ can be < 0
    lr = torch.linspace(-5, 5, 101)
    assert (O.kl_k3(torch.zeros(101), lr) >= 0).all()
    assert O.kl_k3(torch.zeros(1), torch.zeros(1)).item() == 0.0


def test_sequence_kl_and_approx_kl():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert O.sequence_kl(logp, ref, mask).tolist() == approx([0.5 - 1.0])
    new, old = torch.tensor([0.2, -0.4]), torch.zeros(2)
    assert O.approx_kl(new, old).item() == approx((0.02 + 0.08) / 2)


# ======================================================================================
# PPO
# ======================================================================================
def test_per_token_rewards_small():
    logp, ref = torch.tensor([[-1.0, -1.0, 0.0]]), torch.tensor([[-2.0, -1.0, 0.0]])
    rewards, non_score = O.per_token_rewards(torch.tensor([3.0]), logp, ref,
                                             torch.tensor([[1, 1, 0]]), beta=0.5)
    assert rewards.tolist() == [approx([-0.5, 3.0, 0.0])]
    assert non_score.tolist() == [approx([-0.5, 0.0, 0.0])]


def test_gae_on_a_three_step_sequence():
    """γ = 0.9, λ = 0.8 (γλ = 0.72):
        δ₂ = 2 − 1.5 = 0.5,  δ₁ = 0 + 0.9·1.5 − 1 = 0.35,  δ₀ = 1 + 0.9·1 − 0.5 = 1.4
        Â₂ = 0.5,  Â₁ = 0.35 + 0.72·0.5 = 0.71,  Â₀ = 1.4 + 0.72·0.71 = 1.9112
    The second row stops after two tokens: δ₁ = 0 − 1 = −1, Â₀ = 1.4 − 0.72 = 0.68."""
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = O.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv[0].tolist() == approx([1.9112, 0.71, 0.5])
    assert ret[0].tolist() == approx([2.4112, 1.71, 2.0])
    assert adv[1].tolist() == approx([0.68, -1.0, 0.0])
    assert ret[1].tolist() == approx([1.18, 0.0, 0.0])


def test_ratio_clipped_policy_loss_and_clip_fraction():
    """ε = 0.2, ratios (1.5, 0.5, 1.1, 0.5), advantages (1, 1, −1, −1):
        max(−1.5, −1.2) = −1.2 (clip binds), max(−0.5, −0.8) = −0.5,
        max(1.1, 1.1) = 1.1, max(0.5, 0.8) = 0.8 (clip binds)  →  mean 0.05, clipfrac ½."""
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.5])
    new, old = ratios.log(), torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    assert O.ppo_ratio(torch.tensor([LN2]), torch.zeros(1)).item() == approx(2.0)
    assert O.clipped_policy_loss(new, old, adv, 0.2).item() == approx(0.05)
    assert O.clip_fraction(new, old, adv, 0.2).item() == 0.5
    mask = torch.tensor([1, 1, 0, 0])
    assert O.clipped_policy_loss(new, old, adv, 0.2, mask).item() == approx(-0.85)
    assert O.clip_fraction(new, old, adv, 0.2, mask).item() == 0.5


def test_clipped_value_loss_and_value_clip_fraction():
    """V_old = 0, ε = 0.2, R = 1: V = 0.5 → max(0.25, (0.2 − 1)² = 0.64);
    V = 0.1 → 0.81 (no clip). L = ½·(0.64 + 0.81)/2 = 0.3625."""
    new, old, ret = torch.tensor([0.5, 0.1]), torch.zeros(2), torch.ones(2)
    assert O.clipped_value_loss(new, old, ret, 0.2).item() == approx(0.3625)
    assert O.value_clip_fraction(new, old, 0.2).item() == 0.5


def _gae_by_hand(rewards, values, length, gamma, lam):
    """One sequence, written out: δ_t = r_t + γV_{t+1} − V_t, Â_t = Σ_l (γλ)^l δ_{t+l}."""
    out = []
    for t in range(length):
        total = 0.0
        for l in range(length - t):
            k = t + l
            v_next = values[k + 1] if k + 1 < length else 0.0
            delta = rewards[k] + gamma * v_next - values[k]
            total += (gamma * lam) ** l * delta
        out.append(total)
    return out + [0.0] * (len(rewards) - length)


def test_gae_matches_a_hand_unrolled_loop():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1 if t < n else 0 for t in range(6)] for n in lengths])
    for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (1.0, 1.0)):
        adv, ret = O.gae_advantages(rewards, values, mask, gamma, lam)
        for i, n in enumerate(lengths):
            expected = _gae_by_hand(rewards[i].tolist(), values[i].tolist(), n, gamma, lam)
            assert adv[i].tolist() == approx(expected, abs=1e-5)
            assert ret[i, :n].tolist() == approx(
                (adv[i, :n] + values[i, :n]).tolist(), abs=1e-6)
            assert ret[i, n:].abs().sum() == 0
    # γ = λ = 1, V = 0: the advantage is the reward-to-go
    adv, _ = O.gae_advantages(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3),
                            torch.ones(1, 3), 1.0, 1.0)
    assert adv[0].tolist() == [6.0, 5.0, 3.0]


@pytest.mark.parametrize("ratio,adv,expected,clipped", [
    (1.1, 2.0, -2.2, False),   # inside the band: −Â·r
    (0.9, -2.0, 1.8, False),
    (1.5, 2.0, -2.4, True),    # Â > 0, r above 1+ε: the gain is capped at (1+ε)·Â
    (0.5, 2.0, -1.0, False),   # Â > 0, r below 1−ε: the pessimistic −Â·r is kept
    (1.5, -2.0, 3.0, False),   # Â < 0, r above 1+ε: the larger loss −Â·r is kept
    (0.5, -2.0, 1.6, True),    # Â < 0, r below 1−ε: capped at −Â·(1−ε)
])
def test_clipped_policy_loss_inside_and_outside_the_band(ratio, adv, expected, clipped):
    logp_old = torch.tensor([-1.0])
    logp_new = (logp_old + math.log(ratio)).requires_grad_(True)
    a = torch.tensor([adv])
    assert float(O.ppo_ratio(logp_new.detach(), logp_old)) == pytest.approx(ratio, rel=1e-6)
    loss = O.clipped_policy_loss(logp_new, logp_old, a, eps=0.2)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # a binding clip means no gradient: the update stops pushing that token
    assert (float(logp_new.grad.abs()) == 0.0) == clipped
    assert float(O.clip_fraction(logp_new, logp_old, a, 0.2)) == (1.0 if clipped else 0.0)


def test_clipped_policy_loss_is_a_masked_mean():
    logp_old = torch.zeros(1, 3)
    logp_new = torch.log(torch.tensor([[1.0, 1.5, 7.0]]))
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert float(O.clipped_policy_loss(logp_new, logp_old, adv, 0.2, mask)) == \
        pytest.approx((-1.0 - 1.2) / 2)


def test_clipped_value_loss_by_case():
    old, ret = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])
    # first: V moved 1 → 1.5 toward R=2: unclipped error .25, clipped (1.2) error .64 → .64
    # second: V moved 1 → 0.1 toward R=0: unclipped .01, clipped (0.8) .64 → .64
    new = torch.tensor([1.5, 0.1])
    assert float(O.clipped_value_loss(new, old, ret, 0.2)) == pytest.approx(0.5 * (0.64 + 0.64) / 2)
    # inside the band both terms agree
    new = torch.tensor([1.1, 0.9])
    assert float(O.clipped_value_loss(new, old, ret, 0.2)) == pytest.approx(0.5 * (0.81 + 0.81) / 2)


def test_adaptive_kl_update():
    # KL 6 vs target 4: e = clip(0.5) = 0.2; n/H = 8/16 → β·1.1
    assert O.adaptive_kl_update(0.1, 6.0, 4.0, 8, 16) == approx(0.11)
    assert O.adaptive_kl_update(0.1, 3.0, 4.0, 8, 16) == approx(0.09)    # e = −0.25 → −0.2
    assert O.adaptive_kl_update(0.1, 4.4, 4.0, 8, 16) == approx(0.105)   # e = 0.1
    assert O.adaptive_kl_update(0.1, 4.0, 4.0, 8, 16) == approx(0.1)


# ======================================================================================
# DPO / IPO
# ======================================================================================
def test_sequence_logprobs_by_hand():
    """Logits at t predict token t+1; labels −100 count for nothing. Vocabulary of 3.
    Row 0: labels (−100, 1, 2, −100): position 0 gives token 1 the logits (0, ln 3, 0),
    p = 3/5; position 1 gives token 2 uniform logits, p = 1/3: log(3/5) + log(1/3) = −log 5.
    Row 1: only token 0 at position 3, predicted at position 2 by (ln 2, 0, 0): p = 1/2."""
    logits = torch.zeros(2, 4, 3)
    logits[0, 0] = torch.tensor([0.0, math.log(3), 0.0])
    logits[0, 2] = torch.tensor([9.0, -4.0, 2.0])     # predicts a −100 label: left out
    logits[0, 3] = torch.tensor([5.0, 5.0, -5.0])     # predicts nothing: left out
    logits[1, 0] = torch.tensor([7.0, 0.0, 0.0])      # prompt positions: left out
    logits[1, 2] = torch.tensor([LN2, 0.0, 0.0])
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, -100, 0]])
    assert O.sequence_logprobs(logits, labels).tolist() == approx([-math.log(5), -LN2])


def test_dpo_loss_is_log_two_at_zero_margin():
    same = torch.tensor([-3.0, -7.0])
    for eps in (0.0, 0.1, 0.5):
        assert O.dpo_loss(same, same - 1, same, same - 1, beta=0.3,
                          label_smoothing=eps).item() == approx(LN2)


def test_dpo_and_ipo_by_hand():
    """log π_θ(y⁺) = −1, log π_θ(y⁻) = −2, references −1.5 both: h = 0.5 − (−0.5) = 1."""
    c, r = torch.tensor([-1.0]), torch.tensor([-2.0])
    rc, rr = torch.tensor([-1.5]), torch.tensor([-1.5])
    assert O.dpo_margin(c, r, rc, rr).item() == approx(1.0)
    assert O.dpo_implicit_reward(c, rc, beta=0.5).item() == approx(0.25)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731 - softplus: −log σ(z) = sp(−z)
    assert O.dpo_loss(c, r, rc, rr, beta=0.5).item() == approx(sp(-0.5))
    assert O.dpo_loss(c, r, rc, rr, beta=0.5, label_smoothing=0.1).item() == approx(
        0.9 * sp(-0.5) + 0.1 * sp(0.5))
    assert O.ipo_loss(c, r, rc, rr, beta=0.5).item() == approx(0.0)   # h = 1/(2β) = 1
    assert O.ipo_loss(c, r, rc, rr, beta=0.25).item() == approx(1.0)  # (1 − 2)²
    # the gradient raises the chosen answer's log-prob and lowers the rejected one's
    c.requires_grad_(), r.requires_grad_()
    O.dpo_loss(c, r, rc, rr, beta=0.5).backward()
    assert c.grad.item() < 0 < r.grad.item()


# ======================================================================================
# GRPO, Dr. GRPO, RLOO
# ======================================================================================
def test_group_advantages():
    R = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])  # row 0: mean 2, std (Bessel) 1
    assert O.grpo_advantages(R, eps=0.0)[0].tolist() == approx([-1.0, 0.0, 1.0])
    assert O.grpo_advantages(R)[0].tolist() == approx([-1 / 1.0001, 0.0, 1 / 1.0001])
    assert O.grpo_advantages(R)[1].tolist() == [0.0, 0.0, 0.0]  # equal rewards: no signal
    assert O.dr_grpo_advantages(R * 2)[0].tolist() == approx([-2.0, 0.0, 2.0])
    with pytest.raises(ValueError):
        O.grpo_advantages(torch.tensor([[1.0]]))


def test_rloo_leave_one_out_baseline():
    """R = (1, 2, 3, 6), Σ = 12: b_i = (12 − R_i)/3 = (11/3, 10/3, 3, 2);
    Â = (−8/3, −4/3, 0, 4) = 4/3·(R − 3)."""
    R = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert O.rloo_baseline(R).tolist() == approx([11 / 3, 10 / 3, 3.0, 2.0])
    assert O.rloo_advantages(R).tolist() == approx([-8 / 3, -4 / 3, 0.0, 4.0])
    assert O.rloo_advantages(R).tolist() == approx((4 / 3 * O.dr_grpo_advantages(R)).tolist())
    with pytest.raises(ValueError):
        O.rloo_baseline(torch.tensor([1.0]))
