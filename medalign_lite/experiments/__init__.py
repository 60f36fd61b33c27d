"""What the notebooks call: one module per job, each read top to bottom.

=======================  ====================================================================
module                   job
=======================  ====================================================================
``contrastive``          build a dual encoder from its config, train it, embed a dataset,
                         retrieval and phrase-grounding evaluation
``generation``           encode a dataset once, generate reports, nearest-neighbour and
                         majority baselines, NLG + CE scoring
``pretrain``             the cached stand-ins: an aligned vision encoder, a tiny report LM,
                         ALTA's masked autoencoder (all through the trainer)
``variants``             seeds × variants, branching from shared stage checkpoints, the
                         worker pool, one mean ± std table
``claims``               one rule for a claimed ordering: holds / reversed / undecided
``ceiling``              the supervised ceiling: the same image encoder and budget trained on
                         the labels (image→image P@K, CAM grounding, per-observation AUROC)
``aga``, ``s2d``         each method's variant table (and S2D's configuration and stages)
``s2d_runs``             S2D's driver: variants → reports → scores, tables, decided claims
``exgramed``             ExGra-Med's configuration, instruction data, variants (data
                         fractions, α, extended captions, InfoNCE), stand-ins, the two stages,
                         mechanism checks (I-MLE against finite differences, solvers vs noise)
``exgramed_runs``        ExGra-Med's driver: variants → Phantom-VQA answers → scores, floors
                         and a probe ceiling, tables, decided claims, graph snapshots
``alta``                 ALTA's cached MAE, ablation variants, four-view training set, claims
``transfer``             zero-shot classification and the linear probe of any dual encoder
``tables``               the notebooks' result tables (floor and ceiling beside each method)
``benchmark``            notebook 06: every registered method on identical data, every
                         task, cost, decided claims, the README's results table
``params``               checks of a notebook's parameters (``ValueError`` naming each)
=======================  ====================================================================

Arrows point down: notebooks → ``experiments`` → ``methods`` → ``models`` / ``nn`` → ``data``.
"""
