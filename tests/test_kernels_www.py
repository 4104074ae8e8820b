"""WWW kernels against straightforward NumPy references on awkward sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xai_jax.kernels import www


def _norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("n,units,batch,total", [(1, 1, 1, 1), (5, 7, 3, 17), (40, 13, 11, 97)])
def test_topn_streamed_equals_full_sort(n, units, batch, total):
    rng = np.random.default_rng(n + units)
    acts = rng.normal(size=(total, units)).astype(np.float32)
    state = www.topn_init(units, n)
    for start in range(0, total, batch):
        chunk = acts[start:start + batch]
        valid = len(chunk)
        pad = batch - valid
        mask = np.arange(batch) < valid
        padded = np.concatenate([chunk, np.full((pad, units), 1e6, np.float32)])  # padding must never enter
        index = np.concatenate([np.arange(start, start + valid), -np.ones(pad, int)])
        state = www.topn_update(state, padded, index, mask)
    order = np.argsort(-acts, axis=0, kind="stable")[:n]
    kept = min(n, total)
    np.testing.assert_array_equal(np.asarray(state.indices)[:kept], order[:kept])
    np.testing.assert_allclose(np.asarray(state.values)[:kept], np.take_along_axis(acts, order, 0)[:kept])
    assert np.all(np.asarray(state.indices)[kept:] == -1)


def test_topn_averages_conv_maps():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(6, 3, 5, 4)).astype(np.float32)
    state = www.topn_update(www.topn_init(4, 2), maps, np.arange(6), np.ones(6, bool))
    np.testing.assert_allclose(state.values, -np.sort(-maps.mean(axis=(1, 2)), axis=0)[:2], rtol=1e-6)


def _acs_reference(image_emb, topn, concepts, template):
    units = topn.shape[1]
    out = np.zeros((units, len(concepts)))
    for u in range(units):
        for j in range(len(concepts)):
            v = image_emb[topn[:, u]]
            cos_c = _norm(v) @ _norm(concepts[j])
            cos_t = _norm(v) @ _norm(template)
            out[u, j] = np.mean(cos_c - cos_t)
    return out


@pytest.mark.parametrize("probe,n,units,m,d", [(1, 1, 1, 1, 3), (23, 5, 7, 11, 13), (31, 3, 2, 1, 8)])
def test_adaptive_cosine_scores_equal_per_neuron_loop(probe, n, units, m, d):
    rng = np.random.default_rng(probe * 7 + m)
    image_emb = rng.normal(size=(probe, d)).astype(np.float32) * 3
    topn = rng.integers(0, probe, size=(n, units))
    concepts = rng.normal(size=(m, d)).astype(np.float32)
    template = rng.normal(size=(d,)).astype(np.float32)
    mean = www.mean_image_embeddings(image_emb, topn)
    got = www.adaptive_cosine_scores(mean, concepts, template)
    np.testing.assert_allclose(got, _acs_reference(image_emb, topn, concepts, template), atol=1e-5)
    # the crop form: each neuron its own n embeddings
    own = image_emb[topn.T]                                       # [U, n, D]
    np.testing.assert_allclose(www.adaptive_cosine_scores(own, concepts, template), got, atol=1e-5)


def test_adaptive_selection_and_select_concepts():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(9, 29)).astype(np.float32)
    scores[0] = -np.abs(scores[0]) - 0.1                          # all negative: the best one is still kept
    for alpha in (0.95, 0.9, 0.5):
        best = scores.max(axis=1, keepdims=True)
        delta = np.where(best >= 0, alpha * best, best - (1 - alpha) * np.abs(best))
        expected = scores >= delta
        np.testing.assert_array_equal(www.adaptive_selection(scores, alpha), expected)
        assert expected[0].sum() >= 1
        out = www.select_concepts(scores, alpha, max_concepts=5)
        order = np.argsort(-scores, axis=1)[:, :5]
        np.testing.assert_array_equal(out["indices"], order)
        np.testing.assert_array_equal(out["selected"], np.take_along_axis(expected, order, 1))
        np.testing.assert_array_equal(out["count"], expected.sum(1))
    big = www.select_concepts(scores[:, :3], 0.9, max_concepts=10)
    assert big["indices"].shape == (9, 3)


def test_peak_crops():
    rng = np.random.default_rng(4)
    maps = rng.random(size=(5, 4, 7)).astype(np.float32)
    corners = np.asarray(www.peak_crop_corners(maps, (16, 28), (8, 9)))
    for b in range(5):
        r, c = np.unravel_index(np.argmax(maps[b]), (4, 7))
        cy, cx = (r + 0.5) * 16 / 4, (c + 0.5) * 28 / 7
        assert corners[b, 0] == np.clip(np.round(cy - 4), 0, 8)
        assert corners[b, 1] == np.clip(np.round(cx - 4.5), 0, 19)
    images = rng.integers(0, 255, size=(5, 16, 28, 3), dtype=np.uint8)
    crops = np.asarray(www.crop_images(images, corners, (8, 9)))
    for b in range(5):
        t, l = corners[b]
        np.testing.assert_array_equal(crops[b], images[b, t:t + 8, l:l + 9])
    assert www.crop_images(images, corners, (8, 9), (16, 16)).shape == (5, 16, 16, 3)


@pytest.mark.parametrize("mode", ["signed", "abs"])
def test_taylor_shapley_equals_finite_differences_and_linear_head(mode):
    """On a small non-linear net: w_u = a_u * df_c/da_u matches a central finite difference of the gradient,
    and for a linear head on the layer it is exactly W[u, c] * a_u."""
    rng = np.random.default_rng(5)
    b, h, w, k, c = 3, 5, 3, 7, 4
    x = jnp.asarray(rng.normal(size=(b, h, w, 2)), jnp.float32)
    w1 = jnp.asarray(rng.normal(size=(2, k)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(k, c)), jnp.float32)

    def net(offset):
        act = jnp.tanh(x @ w1) + offset                           # the explained layer [B, H, W, K]
        logits = jnp.mean(jnp.sin(act) + act, axis=(1, 2)) @ head
        return logits, act

    classes = jnp.asarray([0, 3, 1])
    contrib, logits, act = www.taylor_shapley(net, jnp.zeros((b, h, w, k)), classes, mode)
    eps = 1e-3
    act_np = np.asarray(act, np.float64)
    expected = np.zeros((b, k))
    for i in range(b):
        for u in range(k):
            plus, minus = np.zeros((b, h, w, k)), np.zeros((b, h, w, k))
            # directional derivative along the channel's own activations = sum_ij a_uij df/da_uij
            direction = np.zeros((b, h, w, k))
            direction[i, :, :, u] = act_np[i, :, :, u]
            plus, minus = eps * direction, -eps * direction
            fp = np.asarray(net(jnp.asarray(plus, jnp.float32))[0])[i, classes[i]]
            fm = np.asarray(net(jnp.asarray(minus, jnp.float32))[0])[i, classes[i]]
            expected[i, u] = (fp - fm) / (2 * eps)
    if mode == "abs":
        expected = np.abs(expected)
    np.testing.assert_allclose(contrib, expected, rtol=2e-2, atol=2e-3)

    # linear head on a vector layer
    feats = jnp.asarray(rng.normal(size=(b, k)), jnp.float32)
    contrib, _, _ = www.taylor_shapley(lambda o: (((feats + o) @ head) + 1.0, feats + o), jnp.zeros((b, k)),
                                       classes, mode)
    expected = np.asarray(head)[:, np.asarray(classes)].T * np.asarray(feats)
    np.testing.assert_allclose(contrib, np.abs(expected) if mode == "abs" else expected, rtol=1e-5, atol=1e-6)


def test_contribution_mode_is_checked():
    with pytest.raises(ValueError):
        www.contributions_from_gradients(jnp.ones((1, 2)), jnp.ones((1, 2)), "both")


def test_class_sums_equal_numpy_group_means():
    rng = np.random.default_rng(6)
    contrib = rng.normal(size=(37, 11)).astype(np.float32)
    labels = rng.integers(0, 5, size=37)
    labels[labels == 3] = 2                                       # class 3 empty -> zeros
    state = www.class_sums_init(5, 11)
    for start in range(0, 37, 8):
        part = slice(start, start + 8)
        cb, lb = contrib[part], labels[part]
        pad = 8 - len(cb)
        state = www.class_sums_update(state, np.concatenate([cb, np.full((pad, 11), 99.0, np.float32)]),
                                      np.concatenate([lb, np.zeros(pad, int)]), np.arange(8) < len(cb))
    means = np.asarray(www.class_means(state))
    for c in range(5):
        expected = contrib[labels == c].mean(0) if (labels == c).any() else np.zeros(11)
        np.testing.assert_allclose(means[c], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.counts, np.bincount(labels, minlength=5))


def test_top_k_gather_concept_maps_and_heatmap():
    rng = np.random.default_rng(7)
    b, h, w, units, k, size = 3, 5, 3, 11, 2, (13, 7)
    maps = rng.random(size=(b, h, w, units)).astype(np.float32)
    contrib = rng.normal(size=(b, units)).astype(np.float32)
    values, neurons = www.top_k_neurons(contrib, k)
    np.testing.assert_array_equal(neurons, np.argsort(-contrib, axis=1)[:, :k])
    chosen = np.asarray(www.gather_maps(maps, neurons))
    for i in range(b):
        for j in range(k):
            np.testing.assert_array_equal(chosen[i, j], maps[i, :, :, int(neurons[i, j])])
    up, regions = www.concept_maps(chosen, size, 70.0)
    ref_up = np.asarray(jax.image.resize(chosen, (b, k) + size, "bilinear"))
    np.testing.assert_allclose(up, ref_up, rtol=1e-6)
    thresholds = np.percentile(ref_up.reshape(b, k, -1), 70, axis=-1)
    np.testing.assert_array_equal(regions, ref_up > thresholds[..., None, None])
    assert abs(np.asarray(regions).mean() - 0.3) < 0.05
    heat = np.asarray(www.overall_heatmap(chosen, values))
    share = np.asarray(values) / np.asarray(values).sum(1, keepdims=True)
    np.testing.assert_allclose(heat, np.einsum("bk,bkhw->bhw", share, chosen), rtol=1e-5)
    assert www.overall_heatmap(chosen, values, size).shape == (b,) + size
    np.testing.assert_array_equal(www.overall_heatmap(chosen, np.zeros((b, k))), 0)


def test_heatmap_similarity():
    rng = np.random.default_rng(8)
    a, b = rng.random(size=(4, 5, 3)), rng.normal(size=(4, 5, 3))
    b[3] = 0
    got = np.asarray(www.heatmap_similarity(a, b))
    flat_a, flat_b = a.reshape(4, -1), b.reshape(4, -1)
    for i in range(3):
        assert got[i] == pytest.approx(flat_a[i] @ flat_b[i] / np.linalg.norm(flat_a[i]) / np.linalg.norm(flat_b[i]),
                                       rel=1e-5)
    assert got[3] == 0


def test_rejection_curve_and_auroc_against_sklearn():
    rng = np.random.default_rng(9)
    for n in (2, 7, 101):
        conf = rng.random(n).round(1)                             # rounded: many ties
        wrong = rng.random(n) < 0.3
        wrong[0], wrong[-1] = True, False
        curve = np.asarray(www.rejection_curve(conf, wrong))
        order = np.argsort(conf, kind="stable")
        np.testing.assert_array_equal(curve, np.concatenate([[0], np.cumsum(wrong[order])]))
        assert float(www.auroc(-conf, wrong)) == pytest.approx(roc_auc_score(wrong, -conf), abs=1e-6)
    assert np.isnan(float(www.auroc(np.arange(3.0), np.zeros(3, bool))))


def _soft_wpmi_reference(sim, acts, top_k, a, lam, p_start, p_end, min_prob=1e-7):
    soft = np.exp(a * sim - (a * sim).max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    inds = np.argsort(-acts, axis=0, kind="stable")[:top_k]
    p = p_start - np.arange(top_k) / top_k * (p_start - p_end)
    rows = []
    for u in range(acts.shape[1]):                                # CLIP-Dissect's per-neuron loop
        chosen = soft[inds[:, u]]
        rows.append(np.sum(np.log(1 + p[:, None] * (chosen - 1) + min_prob), axis=0))
    log_p = np.stack(rows)
    m = log_p.max(0, keepdims=True)
    log_p_d = m + np.log(np.exp(log_p - m).sum(0, keepdims=True)) - np.log(len(rows))
    return log_p - lam * log_p_d


@pytest.mark.parametrize("probe,units,m,top_k", [(13, 1, 7, 5), (41, 9, 17, 11), (100, 3, 1, 100)])
def test_soft_wpmi_equals_clip_dissect_loop(probe, units, m, top_k):
    rng = np.random.default_rng(probe)
    sim = rng.uniform(-0.2, 0.4, size=(probe, m)).astype(np.float32)
    acts = rng.normal(size=(probe, units)).astype(np.float32)
    want = _soft_wpmi_reference(sim.astype(np.float64), acts, top_k, 10.0, 1.0, 0.998, 0.97)
    got = www.soft_wpmi(sim, acts, top_k=top_k, a=10.0, lam=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # both forms of log p(d | E_u): all neurons at once (accelerators) and one at a time (a CPU's default)
    probabilities = www.concept_probabilities(sim, 10.0)
    forms = [np.asarray(www.log_p_given_e(probabilities, acts, top_k, one_neuron_at_a_time=f)) for f in (True, False)]
    np.testing.assert_allclose(forms[0], forms[1], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(www.soft_wpmi_from_log_p(forms[1], 1.0), want, rtol=1e-4, atol=1e-3)


def test_selection_metrics_and_pair_cosine():
    rng = np.random.default_rng(10)
    selected = rng.random(size=(7, 13)) < 0.3
    selected[0] = False
    correct = rng.random(size=(7, 13)) < 0.2
    correct[1] = False
    out = {k: np.asarray(v) for k, v in www.selection_metrics(selected, correct).items()}
    for u in range(7):
        s, t = set(np.flatnonzero(selected[u])), set(np.flatnonzero(correct[u]))
        tp = len(s & t)
        p = tp / len(s) if s else 0.0
        r = tp / len(t) if t else 0.0
        assert out["precision"][u] == pytest.approx(p)
        assert out["recall"][u] == pytest.approx(r)
        assert out["f1"][u] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
        assert out["hit"][u] == (tp > 0)
    emb = rng.normal(size=(13, 6))
    targets = rng.normal(size=(7, 6))
    got = np.asarray(www.mean_pair_cosine(selected, emb, targets))
    assert np.isnan(got[0])
    for u in range(1, 7):
        pairs = [_norm(emb[j]) @ _norm(targets[u]) for j in np.flatnonzero(selected[u])]
        assert got[u] == pytest.approx(np.mean(pairs), rel=1e-5)


def test_plain_cosine_and_acs_differ_by_the_template_term():
    rng = np.random.default_rng(7)
    neurons, concepts, template = rng.normal(size=(5, 6, 8)), rng.normal(size=(9, 8)), rng.normal(size=8)
    plain = np.asarray(www.cosine_scores(jnp.asarray(neurons, jnp.float32), jnp.asarray(concepts, jnp.float32)))
    expected = np.einsum("und,md->unm", _norm(neurons), _norm(concepts)).mean(1)       # mean_o cos(v_o, t_j)
    np.testing.assert_allclose(plain, expected, atol=1e-5)
    acs = np.asarray(www.adaptive_cosine_scores(neurons.astype(np.float32), concepts.astype(np.float32),
                                                template.astype(np.float32)))
    np.testing.assert_allclose(acs, expected - (_norm(neurons) @ _norm(template)).mean(1)[:, None], atol=1e-5)


def test_class_activation_maps_and_grid_corners():
    rng = np.random.default_rng(8)
    features, head = rng.normal(size=(3, 4, 5, 6)), rng.normal(size=(6, 11))
    classes = rng.integers(0, 11, size=(3, 2))
    cam = np.asarray(www.class_activation_maps(features.astype(np.float32), head.astype(np.float32), classes))
    expected = np.stack([np.stack([features[b] @ head[:, c] for c in classes[b]]) for b in range(3)])
    np.testing.assert_allclose(cam, expected, atol=1e-4)
    corners = np.asarray(www.grid_crop_corners((32, 30), (16, 15), 3))
    np.testing.assert_array_equal(corners, [[t, x] for t in (0, 8, 16) for x in (0, 8, 15)])
    np.testing.assert_array_equal(np.asarray(www.grid_crop_corners((32, 32), (16, 16), 1)), [[8, 8]])
