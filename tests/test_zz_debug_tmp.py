import numpy as np, torch
from wm_env.world_model import WorldModel
from test_world_model import rollout, continue_rollout, actions_for
def test_dbg(tiny_bundle, blob_render):
    torch.set_num_threads(1)
    wm = WorldModel.from_pretrained(tiny_bundle)
    starts = np.stack([blob_render(p) for p in ((12.0, 14.0), (20.0, 18.0), (16.0, 10.0))])
    un = WorldModel.from_pretrained(tiny_bundle, use_cache=False)
    a, la = rollout(wm, starts, steps=5, seed=4); b, lb = rollout(un, starts, steps=5, seed=4)
    print("cache vs nocache", (la-lb).abs().max().item(), np.abs(a.astype(int)-b.astype(int)).max())
    frames, latents = rollout(wm, starts, steps=3, seed=20)
    for i in range(3):
        wm.reset(starts[i:i+1], seed=20+i)
        single = np.stack([wm.step(actions_for(t)[i:i+1]) for t in range(3)], axis=1)
        print("batch vs single", (wm.latest_latents[0]-latents[i]).abs().max().item(), np.abs(single[0].astype(int)-frames[i].astype(int)).max())
    wm.reset(starts, seed=40); continue_rollout(wm, 2); before = wm.snapshot()
    u, ul = continue_rollout(wm, 2, first_step=2)
    wm.restore(before); wm.reset_subset([1], starts[1:2], seed=[77]); f, l = continue_rollout(wm, 2, first_step=2)
    print("subset others", (l[[0,2]]-ul[[0,2]]).abs().max().item())
    wm.reset(starts[1:2], seed=77); fresh = np.stack([wm.step(actions_for(2 + t)[1:2]) for t in range(2)], axis=1)
    print("subset fresh", (wm.latest_latents[0]-l[1]).abs().max().item(), np.abs(fresh[0].astype(int)-f[1].astype(int)).max())
    rec = wm.decode(wm.encode(starts)); print("recon", np.abs(rec.astype(int)-starts.astype(int)).mean())
    a1,_=rollout(wm, starts, steps=3, seed=1); b1,_=rollout(wm, starts, steps=3, seed=2); print("seed diff", np.abs(a1.astype(int)-b1.astype(int)).mean())
    s4 = np.stack([blob_render((x, y)) for x, y in ((16, 16), (12, 18), (20, 13), (15, 20))])
    def cx(fr):
        w = np.clip(fr[..., 0].astype(float) - 30, 0, None); return (w * np.arange(32)).sum((-2, -1)) / w.sum((-2, -1))
    for seed in (0, 100, 5, 9):
        ends={}
        for dx in (1.0,-1.0):
            wm.reset(s4, seed=seed); act=np.zeros((4,7),np.float32); act[:,0]=dx
            for _ in range(3): fr=wm.step(act)
            ends[dx]=fr
        print("seed", seed, "diff", np.abs(ends[1.0].astype(int)-ends[-1.0].astype(int)).mean().round(2), "shift", (cx(ends[1.0])-cx(ends[-1.0])).round(2))
