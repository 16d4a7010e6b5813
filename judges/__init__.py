"""Success judges: ``judge(frames uint8 (T, H, W, 3), instruction) -> Verdict``.

- :mod:`judges.base`: the :class:`~judges.base.Judge` protocol, :class:`~judges.base.Verdict`
  (``success`` True / False / None for an abstention, ``score``, ``rationale``), input checks.
- :mod:`judges.vlm`: a local transformers VLM asked a yes/no question (token probabilities,
  majority vote); :mod:`judges.openai_client`: the same question to an OpenAI-compatible server;
  :mod:`judges.prompt`: the question, frame subsampling and the vote they share.
- :mod:`judges.probe`: a success classifier on world-model latents (``wmgym train probe``).
- :mod:`judges.oracle`: the sim's success predicate, for ground-truth runs.
- :mod:`judges.ensemble`: several judges as one, and their agreement (Cohen's / Fleiss' kappa).
- :mod:`judges.calibrate`: accuracy / TPR / FPR against sim labels (``wmgym judge calibrate``).
- :mod:`judges.registry`: ``load_judge(spec, path=None, **options)``.

Importing a judge module never imports transformers, diffusers or openai (they load when a judge
is built); only the probe and VLM modules import torch.
"""
