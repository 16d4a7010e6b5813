"""The world model's networks and samplers: everything needed to *run* a bundle.

Encoders (``encoders``), S-VAE adapters (``adapters``), pixel decoders (``decoder``), the DiT
transition model (``dit``) with its mean head (``mean_head``) and state head (``state_head``),
and the flow / DDPM samplers (``flow``). :class:`wm_env.world_model.WorldModel` builds them from
a bundle; the ``train`` package trains them.
"""
