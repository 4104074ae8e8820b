"""The jitted, pure-``jnp`` kernels behind every method: whole-batch maps and streamed accumulators.

Modules:

- :mod:`~xai_jax.kernels.near_miss`: NMA's near-miss matrix, streamed (:class:`NearMissState`), and the
  connection graph's weights.
- :mod:`~xai_jax.kernels.floyd_warshall`: all-pairs shortest paths, unblocked and blocked.
- :mod:`~xai_jax.kernels.clustering`: DEC's soft assignment, target and loss, k-means and the weighted
  nearest neighbours of the activation clustering surrogate.
- :mod:`~xai_jax.kernels.srae`: the sparse reconstruction autoencoder's loss behind an XNN.
- :mod:`~xai_jax.kernels.xnn_metrics`: XNN's faithfulness, orthogonality (streamed heatmap correlation,
  :class:`CorrelationState`) and locality metrics.
- :mod:`~xai_jax.kernels.attribution`: Grad-CAM, excitation backprop and contrastive MWP.
- :mod:`~xai_jax.kernels.cladec`: ClaDec's loss, comprehensibility/fidelity measures and occlusion relevance.
- :mod:`~xai_jax.kernels.www`: WWW's what/where/why (streamed top-n, :class:`TopNState`; class-wise
  contributions, :class:`ClassContributionState`), trust and the CLIP-Dissect baseline.

A streamed kernel is an ``init`` / ``update`` / read-out triple over a ``NamedTuple`` state: a pytree, so it
folds through :func:`xai_jax.engine.run` (jitted, donated) unchanged.

Every public function and state type is re-exported here, with two exceptions that go through their
module: ``reconstruction_loss``, which both :mod:`~xai_jax.kernels.cladec` (ClaDec's pixel loss) and
:mod:`~xai_jax.kernels.srae` (SRAE's activation loss) define, and the function ``floyd_warshall``, whose
name here is its module's (``kernels.floyd_warshall.floyd_warshall``; a function in its place would break
``import xai_jax.kernels.floyd_warshall as m`` and patching of the module). Constants stay in their modules.

The kernels import JAX and NumPy only, never the rest of ``xai_jax``, so that importing them (all of them:
a few tens of milliseconds on top of JAX) pulls in no model, data or method code.
"""

from xai_jax.kernels import (attribution, cladec, clustering, floyd_warshall, near_miss, platform, srae, www,
                             xnn_metrics)
from xai_jax.kernels.attribution import (apply_layer, contrastive_mwp, excitation_backprop, explainer_layers,
                                         grad_cam, layer_inputs, normalise_maps, upsample_maps)
from xai_jax.kernels.cladec import (accuracy, cladec_loss, cladec_relevance, d_acc, d_rec, gradcam_relevance,
                                    occlude, occlusion_masks, reconstruction_distance, select_min_max)
from xai_jax.kernels.clustering import (cluster_frequencies, kl_divergence, kl_divergence_log, kmeans,
                                        kmeans_plusplus, lloyd, lloyd_step, log_soft_assignment,
                                        nearest_neighbours, project_to_sphere, soft_assignment,
                                        target_distribution, validate_layer_weights)
from xai_jax.kernels.floyd_warshall import floyd_warshall_auto
from xai_jax.kernels.near_miss import (NearMissState, connection_weights, fill_disconnected,
                                       label_probability_matrix, near_miss_init, near_miss_matrix, near_miss_update)
from xai_jax.kernels.platform import platform_of
from xai_jax.kernels.srae import (approximation, faithfulness_loss, one_vs_all_weights, pull_away_loss,
                                  sparse_reconstruction_loss, srae_loss)
from xai_jax.kernels.www import (ClassContributionState, TopNState, adaptive_cosine_scores, adaptive_selection,
                                 adaptive_threshold, auroc, class_activation_maps, class_means, cosine_scores,
                                 grid_crop_corners, class_sums_init, class_sums_update,
                                 concept_maps, contributions_from_gradients, crop_images, gather_maps,
                                 heatmap_similarity, l2_normalise, mean_image_embeddings, mean_pair_cosine,
                                 neuron_activations, overall_heatmap, peak_crop_corners, rejection_curve,
                                 select_concepts, selection_metrics, soft_wpmi, soft_wpmi_from_log_p,
                                 soft_wpmi_log_p_given_e, concept_probabilities, log_p_given_e, taylor_shapley,
                                 top_k_neurons, topn_init, topn_update)
from xai_jax.kernels.xnn_metrics import (CorrelationState, correlation_init, correlation_matrix,
                                         correlation_update, f_cls, f_reg, heatmap_correlation, locality,
                                         locality_from_histogram, mask_part_weights, o1, o2, part_probabilities,
                                         pixel_distribution, voronoi_part_weights)

__all__ = [
    # modules
    "attribution", "cladec", "clustering", "floyd_warshall", "near_miss", "platform", "srae", "www", "xnn_metrics",
    # near_miss
    "NearMissState", "near_miss_init", "near_miss_update", "near_miss_matrix", "label_probability_matrix",
    "connection_weights", "fill_disconnected",
    # floyd_warshall (the function itself is floyd_warshall.floyd_warshall: the name is the module's)
    "floyd_warshall_auto",
    # clustering
    "log_soft_assignment", "soft_assignment", "cluster_frequencies", "target_distribution", "kl_divergence_log",
    "kl_divergence", "project_to_sphere", "kmeans_plusplus", "lloyd_step", "lloyd", "kmeans",
    "validate_layer_weights", "nearest_neighbours",
    # srae
    "approximation", "faithfulness_loss", "one_vs_all_weights", "sparse_reconstruction_loss", "pull_away_loss",
    "srae_loss",
    # xnn_metrics
    "CorrelationState", "f_reg", "f_cls", "correlation_init", "correlation_update", "correlation_matrix",
    "heatmap_correlation", "o1", "o2", "voronoi_part_weights", "mask_part_weights", "part_probabilities",
    "pixel_distribution", "locality_from_histogram", "locality",
    # attribution
    "grad_cam", "normalise_maps", "upsample_maps", "apply_layer", "layer_inputs", "excitation_backprop",
    "contrastive_mwp", "explainer_layers",
    # cladec
    "cladec_loss", "reconstruction_distance", "d_rec", "accuracy", "d_acc", "occlusion_masks", "occlude",
    "cladec_relevance", "gradcam_relevance", "select_min_max",
    # www
    "TopNState", "ClassContributionState", "l2_normalise", "neuron_activations", "topn_init", "topn_update",
    "mean_image_embeddings", "cosine_scores", "adaptive_cosine_scores", "grid_crop_corners",
    "class_activation_maps", "adaptive_threshold", "adaptive_selection",
    "select_concepts", "peak_crop_corners", "crop_images", "contributions_from_gradients", "taylor_shapley",
    "class_sums_init", "class_sums_update", "class_means", "top_k_neurons", "gather_maps", "concept_maps",
    "overall_heatmap", "heatmap_similarity", "rejection_curve", "auroc", "soft_wpmi_log_p_given_e",
    "concept_probabilities", "log_p_given_e", "soft_wpmi_from_log_p", "soft_wpmi", "selection_metrics",
    "mean_pair_cosine",
    # platform
    "platform_of",
]
