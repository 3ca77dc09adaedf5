"""RegionCaptioner: frozen LLM stays frozen, overfit, batched == single generation, matching, SCST."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dense3d.errors import ConfigError
from dense3d.models.captioner.decoder import smollm2_decoder, tiny_llama_decoder
from dense3d.models.captioner.llama_adapter import LlamaAdapter
from dense3d.models.captioner.qformer import RelationQFormer
from dense3d.models.captioner.region_captioner import RegionCaptioner
from dense3d.models.captioner.motion_hint import MotionHint, box_motion_features
from dense3d.models.captioner.relation_hint import RelationHint
from dense3d.models.context.bica import BiCADecoder, SceneContext
from dense3d.models.matching import assign_captions, hungarian_match
from dense3d.structures.captions import DenseCaption
from dense3d.structures.sample import RegionFeatures

CLASSES = ["car", "truck", "tree", "person"]
COLOURS = ["red", "blue", "green", "white"]
D, H = 32, 64


def oracle_scene(seed: int = 0):
    """2 scenes x 4 regions with "oracle" features (class + colour embeddings, as if perception
    were perfect), GT geometry, context queries and one caption per region."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 2, 3, 1, 2, 3, 0])
    colours = torch.tensor([0, 1, 2, 3, 2, 3, 0, 1])
    emb_c, emb_k = torch.randn(4, D, generator=g), torch.randn(4, D, generator=g)
    feats = (emb_c[labels] + emb_k[colours]).view(2, 4, D)  # (8, D) -> (B=2, R=4, D)
    geo = torch.cat([torch.randn(8, 3, generator=g) * 10, torch.rand(8, 3, generator=g) + 1,
                     torch.rand(8, 1, generator=g)], 1).view(2, 4, 7)
    regions = RegionFeatures("box", feats, geo, torch.full((2, 4), 0.9), labels.view(2, 4),
                             torch.ones(2, 4, dtype=torch.bool))
    ctx = SceneContext(torch.randn(2, 6, D, generator=g), torch.randn(2, 6, 3, generator=g) * 10,
                       torch.ones(2, 6, dtype=torch.bool))
    where = ["near the road."] * 4 + ["far from the tree."] * 4
    caps = [f"a {COLOURS[k]} {CLASSES[c]} {w}" for c, k, w in zip(labels.tolist(), colours.tolist(), where)]
    return regions, ctx, [caps[0:4], caps[4:8]]


WORDS = ["describe the object. describe the sound. a red blue green white car truck tree person",
         "near far from the road tree horn siren"]


def tiny_captioner(bica: bool = True, neighbours: int = 3, seed: int = 0, llm_autocast: bool = False,
                   relation_phrases: dict | None = None, relation_input: bool = False,
                   relation_hint_tokens: bool = True, motion_phrases: dict | None = None,
                   hint_embed_lr_scale: float = 1.0, **qformer_options) -> RegionCaptioner:
    torch.manual_seed(seed)
    return RegionCaptioner(
        decoder=tiny_llama_decoder(WORDS, hidden_size=H),
        adapter=LlamaAdapter(H, 4, num_layers=2, prompt_len=4),
        qformer=RelationQFormer(64, 4, 1, num_queries=4, num_neighbours=neighbours, region_dim=64 if bica else D,
                                out_dim=H, **qformer_options),
        bica=BiCADecoder(64, 4, 1, region_dim=D, context_dim=D) if bica else None,
        class_names={"box": CLASSES, "event": ["horn", "siren"]},
        max_new_tokens=12,
        llm_autocast=llm_autocast,
        relation_phrases=relation_phrases,
        relation_input=relation_input,
        relation_hint_tokens=relation_hint_tokens,
        motion_phrases=motion_phrases,
        hint_embed_lr_scale=hint_embed_lr_scale,
    )


def test_training_steps_leave_the_llm_bit_identical():
    regions, ctx, caps = oracle_scene()
    model = tiny_captioner()
    lm = model._lm()
    frozen = {k: v.clone() for k, v in lm.state_dict().items()}
    trainable = {id(p): p.detach().clone() for p in model.trainable_parameters()}
    assert all(not p.requires_grad for p in lm.parameters())
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    assert not lm.training  # the LLM stays in eval mode (no dropout)
    for _ in range(3):
        out = model(regions, ctx, caps)
        opt.zero_grad()
        out["loss_caption"].backward()
        opt.step()
    assert int(out["num_captions"]) == 8 and torch.isfinite(out["loss_caption"])
    assert all(p.grad is None for p in lm.parameters())
    for k, v in lm.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    used = [p for p in model.trainable_parameters() if p.grad is not None]  # event/time parts: unused here
    assert len(used) > 0.8 * len(trainable)
    assert all(not torch.equal(p.detach(), trainable[id(p)]) for p in used)
    assert not torch.equal(model.adapter.gates.detach(), torch.zeros_like(model.adapter.gates))


def test_zero_gates_leave_the_llm_unchanged_inside_the_captioner():
    regions, ctx, _ = oracle_scene()
    model = tiny_captioner().eval()
    lm, tok = model._lm(), model.decoder.tokenizer
    ids = tok(["describe the object. a red car"], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = lm(**ids).logits
        visual = model.encode(regions, ctx)[0][0, :1]  # (1, K, H) real visual tokens
        with model.adapter.conditioned_on(visual):
            assert torch.equal(lm(**ids).logits, ref)


def test_bf16_autocast_runs_the_llm_in_bfloat16_with_float32_gradients():
    """llm_autocast: the LLM's matmuls run in bfloat16 (its weights and the trained parts stay
    float32); loss and gradients stay close to float32's; zero gates are still an exact no-op."""
    regions, ctx, caps = oracle_scene()
    grads, losses = {}, {}
    for bf16 in (False, True):
        model = tiny_captioner(llm_autocast=bf16)
        with torch.no_grad():
            model.adapter.gates.fill_(0.3)
        lm = model._lm()
        model(regions, ctx, caps)  # the first step also checks the cached frozen prefix against a float32 forward (1e5332f)
        seen = []
        hook = lm.model.layers[-1].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        out = model(regions, ctx, caps)
        out["loss_caption"].backward()
        hook.remove()
        assert seen == [torch.bfloat16 if bf16 else torch.float32]
        assert all(p.dtype == torch.float32 for p in model.parameters())
        losses[bf16] = out["loss_caption"].item()
        grads[bf16] = torch.cat([p.grad.flatten() for p in (model.adapter.gates, model.adapter.prompts, model.qformer.queries)])
    assert abs(losses[True] - losses[False]) < 0.02 * losses[False]
    assert torch.nn.functional.cosine_similarity(grads[True], grads[False], 0) > 0.99
    model = tiny_captioner(llm_autocast=True).eval()  # zero gates
    lm, tok = model._lm(), model.decoder.tokenizer
    ids = tok(["describe the object. a red car"], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad(), model._precision():
        ref = lm(**ids).logits
        with model.adapter.conditioned_on(model.encode(regions, ctx)[0][0, :1]):
            assert torch.equal(lm(**ids).logits, ref)
    assert len(model.generate(regions, ctx)[0]) == 4


def test_autocast_by_default_only_where_bfloat16_is_native(monkeypatch):
    """llm_autocast=None follows the hardware: on an AVX2-only CPU a bfloat16 matmul is ~60x slower
    than a float32 one (scalar fallback), so autocast would slow training down, not speed it up."""
    import dense3d.models.captioner.region_captioner as rc

    assert rc.bf16_is_fast(torch.device("cpu")) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    model = tiny_captioner(llm_autocast=None)
    for native in (False, True):
        monkeypatch.setattr(rc, "bf16_is_fast", lambda device, native=native: native)
        with model._precision():
            assert torch.is_autocast_enabled("cpu") == native
    for forced in (False, True):  # an explicit setting wins
        with tiny_captioner(llm_autocast=forced)._precision():
            assert torch.is_autocast_enabled("cpu") == forced


def test_batched_generation_equals_one_region_at_a_time():
    regions, ctx, _ = oracle_scene()
    regions.mask[1, 3] = False  # one padded region
    model = tiny_captioner().eval()
    with torch.no_grad():
        model.adapter.gates.normal_(0, 1.0)  # let the visual tokens matter
    batched = model.generate(regions, ctx)
    single = model.generate(regions, ctx, batch_size=1)
    assert [[c.text for c in s] for s in batched] == [[c.text for c in s] for s in single]
    assert [len(s) for s in batched] == [4, 3]  # padded regions get no caption
    texts = {c.text for s in batched for c in s}
    assert len(texts) > 1
    first = batched[0][0]
    assert isinstance(first, DenseCaption) and first.kind == "box" and first.label == "car"
    assert first.region == tuple(regions.geometry[0, 0].tolist()) and abs(first.score - 0.9) < 1e-6


@pytest.mark.slow
def test_overfit_eight_regions_reproduces_their_captions():
    regions, ctx, caps = oracle_scene()
    model = tiny_captioner()
    model._lm()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-2)
    want = [c for row in caps for c in row]
    got = []
    for step in range(1, 301):
        model.train()
        loss = model(regions, ctx, caps)["loss_caption"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 150 and step % 25 == 0:
            model.eval()
            got = [c.text for s in model.generate(regions, ctx) for c in s]
            if got == want:
                break
    assert got == want, (step, float(loss), got)


def test_ablations_and_joint_scenes_run():
    regions, ctx, caps = oracle_scene()
    events = RegionFeatures("event", torch.randn(2, 2, D), torch.tensor([[[0.0, 1.0], [2.0, 3.0]]] * 2), torch.ones(2, 2),
                            torch.tensor([[0, 1], [1, 0]]), torch.tensor([[True, True], [True, False]]))
    ev_caps = [["a horn near the road.", None], ["a siren far from the tree.", None]]
    # the four ablations, then the full model with relation ranks and neighbour-seeded queries,
    # then with "between" relations and the room layout too (boxes carry their wall gaps; events none)
    walled = dataclasses.replace(regions, extra={"wall_gaps": torch.rand(*regions.mask.shape, 4)})
    for bica, k, opts in ((True, 3, {}), (False, 3, {}), (True, 0, {}), (False, 0, {}),
                          (True, 3, {"relation_ranks": True, "neighbour_queries": 2}),
                          (True, 3, {"relation_ranks": True, "neighbour_queries": 2, "relation_between": True,
                                     "room_layout": True})):
        model = tiny_captioner(bica=bica, neighbours=k, **opts)
        out = model([walled if opts.get("room_layout") else regions, events], ctx, [caps, ev_caps])
        assert int(out["num_captions"]) == 10 and torch.isfinite(out["loss_caption"])
        out["loss_caption"].backward()
        assert model.adapter.gates.grad is not None
    model.eval()
    res = model.generate([walled, events], ctx)
    assert [len(s) for s in res] == [6, 5]
    assert [c.kind for c in res[1]] == ["box"] * 4 + ["event"] and res[1][-1].label == "siren"
    # no captions at all: a zero loss that still backpropagates
    empty = model(walled, ctx, [[None] * 4, [None] * 4])
    assert float(empty["loss_caption"].detach()) == 0.0 and int(empty["num_captions"]) == 0


def test_target_order_trains_a_head_towards_the_named_neighbour():
    regions, ctx, _ = oracle_scene()  # scene 0: car, truck, tree, person; scene 1: truck, tree, person, car
    caps = [["a red car next to the tree.", "a blue truck between the car and the person.", None, "a person."],
            ["a green truck near the road.", None, None, "a blue car next to the car."]]
    events = RegionFeatures("event", torch.randn(2, 2, D), torch.tensor([[[0.0, 1.0], [2.0, 3.0]]] * 2), torch.ones(2, 2),
                            torch.tensor([[0, 1], [1, 0]]), torch.tensor([[True, True], [True, False]]))
    ev_caps = [["a horn before the siren.", None], [None, None]]
    model = tiny_captioner(neighbours=3, neighbour_queries=2, target_order=2)
    out = model([regions, events], ctx, [caps, ev_caps])
    # labelled (region, p) terms: car (tree, none), truck (car, person), person (none, none),
    # truck 2 (none, none), car 2 (none, none: its own class only); the horn (siren, none)
    assert int(out["num_target_terms"]) == 12 and float(out["loss_target"].detach()) > 0
    (out["loss_caption"] + out["loss_target"]).backward()
    head = model.qformer.target_head[-1].weight.grad
    assert head is not None and head.abs().sum() > 0
    assert "loss_target" not in tiny_captioner()(regions, ctx, caps)
    texts = model.generate([regions, events], ctx)  # the head chooses the order
    assert [len(t) for t in texts] == [6, 5]
    # the loss is the head's cross-entropy over the labelled (region, p) terms, by hand
    model.eval()
    seen = []
    model.qformer.register_forward_hook(lambda mod, args, kw, out: seen.append((kw, out)), with_kwargs=True)
    out = model(regions, ctx, caps)
    logits = seen[-1][1][1]  # (B, R, k + 1, P)
    idx, valid = model.qformer.neighbours(regions)
    terms = []
    for b, i, p in [(b, i, p) for b in range(2) for i in range(4) for p in range(2) if caps[b][i] is not None]:
        named = {(0, 0): [2], (0, 1): [0, 3]}.get((b, i), [])  # scene 0: car -> tree; truck -> car, person
        want = (idx[b, i] == named[p]).nonzero()[0, 0] if p < len(named) else torch.tensor(3)  # slot k = 3: none
        terms.append(torch.nn.functional.cross_entropy(logits[b, i, :, p], want))
    torch.testing.assert_close(out["loss_target"], torch.stack(terms).mean())
    # a kind without class names has no labels: its neighbours stay nearest first, before and after training
    model.class_names.pop("event")
    out = model([regions, events], ctx, [caps, ev_caps])
    assert int(out["num_target_terms"]) == 10
    kw, _ = seen[-1]  # the events' call: every target "none" (slot k = 3), so nearest first
    assert kw["target_slots"].shape == (2, 2, 2) and bool((kw["target_slots"] == 3).all())
    model.generate([regions, events], ctx)
    assert bool((seen[-1][0]["target_slots"] == 3).all())
    # malformed caption lists: a one-line ConfigError before any label is read
    with pytest.raises(ConfigError, match=r"captions\[box\]"):
        model(regions, ctx, [caps[0], caps[1][:2]])
    with pytest.raises(ConfigError, match="one list per region kind"):
        model([regions, events], ctx, [caps])


def test_relation_head_learns_the_stated_relation_from_the_visual_tokens():
    regions, ctx, _ = oracle_scene()
    caps = [["a red car next to the tree.", "a blue truck between the car and the person.", None, "a person."],
            ["a green truck behind the red car.", None, "a person near the road.", "a blue car."]]
    phrases = {"next_to": ["next to", "near"], "behind": ["behind"], "between": ["between"]}
    model = tiny_captioner(relation_phrases=phrases)
    assert (model.relation_head.in_features, model.relation_head.out_features) == (4 * H, 4)  # K = 4 tokens of H; 3 + none
    out = model(regions, ctx, caps)
    # six captioned regions: next_to, between, none; behind, none ("near the road": no region named), none
    labels = torch.tensor([0, 2, 3, 1, 3, 3])
    assert int(out["num_relation_terms"]) == 6
    visual = model.encode(regions, ctx)[0]  # (B, R, K, H)
    rows = visual[torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 3, 0, 2, 3])].flatten(1)  # (6, K*H)
    torch.testing.assert_close(out["loss_relation"], torch.nn.functional.cross_entropy(model.relation_head(rows), labels))
    out["loss_relation"].backward()  # its gradient reaches the Q-Former, whose tokens the LLM reads
    assert model.qformer.out.weight.grad.abs().sum() > 0
    # it learns: 60 steps of the head loss alone take the six labels to 100 %
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        out = model(regions, ctx, caps)
        out["loss_relation"].backward()
        opt.step()
    assert float(model(regions, ctx, caps)["relation_accuracy"]) == 100.0
    # no region captioned: a zero loss with a graph; no head: no term at all
    out = model(regions, ctx, [[None] * 4, [None] * 4])
    assert int(out["num_relation_terms"]) == 0 and float(out["loss_relation"].detach()) == 0.0
    assert "loss_relation" not in tiny_captioner()(regions, ctx, caps)


def test_relation_phrases_are_checked_when_built():
    for bad in ({"next_to": ["next to"], "behind": [""]}, {"next_to": ["next to"], "behind": []},
                {"next_to": ["next to"], "behind": "behind"},  # a string, not a list of phrases
                {"next_to": ["next to", "near"], "behind": ["Near "]}):  # one phrase, two relations
        with pytest.raises(ConfigError, match=r"relation_phrases\.behind"):
            tiny_captioner(relation_phrases=bad)
    with pytest.raises(ConfigError, match="relation_phrases.*mapping"):
        tiny_captioner(relation_phrases=["next to", "behind"])


def test_relation_head_on_a_kind_without_regions():
    """A batch with no box at all (R = 0) gives no relation term, and no error."""
    regions, ctx, _ = oracle_scene()
    empty = dataclasses.replace(regions, features=regions.features[:, :0], geometry=regions.geometry[:, :0],
                                scores=regions.scores[:, :0], labels=regions.labels[:, :0], mask=regions.mask[:, :0])
    model = tiny_captioner(relation_phrases={"behind": ["behind"]})
    out = model(empty, ctx, [[], []])
    assert int(out["num_relation_terms"]) == 0 and out["loss_relation"].requires_grad


def test_target_word_weight_weights_the_tokens_naming_the_target():
    regions, ctx, _ = oracle_scene()  # scene 0: car, truck, tree, person
    caps = [["a red car near the blue tree.", "a blue truck near the road.", None, None], [None] * 4]
    losses = {}
    for w in (1.0, 3.0):
        model = tiny_captioner()
        model.prefix_cache, model.target_word_weight = None, w  # the full forward, where the logits can be seen
        with torch.no_grad():
            model.adapter.gates.normal_(0, 1.0)
        model.eval()
        seen = {}
        model.decoder.model.register_forward_hook(
            lambda mod, args, kw, out: seen.update(ids=kw["input_ids"], logits=out.logits), with_kwargs=True)
        losses[w] = model(regions, ctx, caps)["loss_caption"]
    # by hand: rows "describe the object ." + caption + eos; "blue tree" (the car's target) weighs 3,
    # the truck's caption names no other class
    ids, logits = seen["ids"], seen["logits"]
    tok = model.decoder.tokenizer
    num = den = 0.0
    for n, cap in enumerate(caps[0][:2]):
        words = tok.tokenize(cap)
        for j, word in enumerate(words + [tok.eos_token]):
            t = 4 + j
            w = 3.0 if n == 0 and word in ("blue", "tree") else 1.0
            num += w * float(torch.nn.functional.cross_entropy(logits[n, t - 1].float(), ids[n, t]))
            den += w
    assert abs(float(losses[3.0]) - num / den) < 1e-5
    assert abs(float(losses[3.0]) - float(losses[1.0])) > 1e-4
    # captions naming no target: the weight changes nothing
    plain = [["a red car near the road.", "a blue truck.", None, None], [None] * 4]
    torch.manual_seed(0)
    a = model(regions, ctx, plain)["loss_caption"]
    model.target_word_weight = 1.0
    torch.testing.assert_close(model(regions, ctx, plain)["loss_caption"], a)
    with pytest.raises(ConfigError, match="target_word_weight"):
        RegionCaptioner(model.decoder, model.adapter, model.qformer, target_word_weight=0.0)


def test_assign_captions_is_hungarian_and_iou_gated():
    gt = torch.tensor([[0.0, 0, 0, 4, 2, 1.5, 0.0], [10.0, 0, 0, 4, 2, 1.5, 0.5]])
    pred = torch.tensor([[[10.2, 0.1, 0, 4, 2, 1.5, 0.5],  # GT 1, IoU ~0.85
                          [0.1, 0, 0, 4, 2, 1.5, 0.0],  # GT 0, IoU ~0.95
                          [0.5, 0, 0, 4, 2, 1.5, 0.0],  # also GT 0 but worse: left unmatched (one-to-one)
                          [30.0, 0, 0, 4, 2, 1.5, 0.0]]])  # nothing
    regions = RegionFeatures("box", torch.zeros(1, 4, 2), pred, torch.ones(1, 4), torch.zeros(1, 4, dtype=torch.long),
                             torch.ones(1, 4, dtype=torch.bool))
    caps = assign_captions(regions, [gt], [[["the first car"], ["the second car", "car two"]]], iou_threshold=0.5, seed=0)
    assert caps[0][1] == "the first car" and caps[0][1 - 1] in ("the second car", "car two")
    assert caps[0][2] is None and caps[0][3] is None
    capped = assign_captions(regions, [gt], [[["a"], ["b"]]], iou_threshold=0.5, max_per_scene=1, seed=0)
    assert sum(c is not None for c in capped[0]) == 1
    # IoU gating drops a pair the assignment would make
    rows, cols = hungarian_match(torch.tensor([[0.3, 0.0], [0.0, 0.9]]), threshold=0.5)
    assert rows.tolist() == [1] and cols.tolist() == [1]
    # events use temporal IoU
    ev = RegionFeatures("event", torch.zeros(1, 2, 2), torch.tensor([[[0.0, 2.0], [5.0, 6.0]]]), torch.ones(1, 2),
                        torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    caps = assign_captions(ev, [torch.tensor([[5.1, 6.0], [0.0, 1.8]])], [[["beep"], ["horn"]]], iou_threshold=0.5)
    assert caps == [["horn", "beep"]]


def test_scst_loss_backpropagates_into_trainable_parts():
    regions, ctx, caps = oracle_scene()
    model = tiny_captioner()
    with torch.no_grad():
        model.adapter.gates.fill_(0.5)
    torch.manual_seed(0)
    refs = [[[c, c.replace("a ", "one ")] for c in row] for row in caps]
    out = model.scst_loss(regions, ctx, refs)
    assert torch.isfinite(out["loss_scst"]) and out["reward_greedy"] >= 0
    out["loss_scst"].backward()
    assert model.adapter.prompts.grad is not None and model.qformer.queries.grad is not None
    assert all(p.grad is None for p in model._lm().parameters())


def test_smollm2_captioner_builds_without_loading_the_llm():
    dec = smollm2_decoder()
    model = RegionCaptioner(dec, LlamaAdapter(576, 9, 8, 8), RelationQFormer(64, 4, 1, 8, 4, D, 576))
    assert not dec.loaded  # ~18 s of loading happen on first use only
    assert all(p.requires_grad for p in model.parameters())


def test_checkpoint_state_holds_only_what_trains():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cap = instantiate(OmegaConf.load("configs/model/captioner/tiny.yaml"))
    _ = cap.decoder.model  # load the frozen LM
    sd = cap.state_dict()
    assert not any(".lm." in k or k.startswith("lm.") for k in sd), [k for k in sd if "lm." in k][:3]
    trainable = {n for n, p in cap.named_parameters() if p.requires_grad}
    assert trainable <= set(sd)
    other = instantiate(OmegaConf.load("configs/model/captioner/tiny.yaml"))
    _ = other.decoder.model
    other.load_state_dict(sd, strict=True)  # the frozen LM's weights are not expected


def _repeats_an_ngram(tokens, n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_scst_baseline_decodes_like_generate_and_samples_keep_the_ngram_block(monkeypatch):
    """The self-critical baseline is the caption evaluation produces: generate()'s n-gram block and
    repetition penalty apply to it (and the n-gram block to the samples, as in transformers)."""
    from dense3d.models.captioner import region_captioner

    regions, ctx, caps = oracle_scene()
    model = tiny_captioner(seed=1)  # an untrained adapter whose greedy captions loop: "from from from from ..."
    with torch.no_grad():
        model.adapter.gates.fill_(0.5)
    looping = [c.text.split() for row in model.generate(regions, ctx) for c in row]
    assert any(_repeats_an_ngram(words, 2) for words in looping)  # without the block the test means nothing
    model.no_repeat_ngram_size, model.repetition_penalty = 2, 1.3
    expected = [c.text for row in model.generate(regions, ctx) for c in row]

    calls = []  # (do_sample, (texts, token ids)) of every decoding SCST runs

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((kwargs.get("do_sample", False), out))
        return out

    real = region_captioner.generate_captions
    monkeypatch.setattr(region_captioner, "generate_captions", spy)
    refs = [[[c] for c in row] for row in caps]
    torch.manual_seed(0)
    model.scst_loss(regions, ctx, refs)
    baseline = [out for sampled, out in calls if not sampled]
    samples = [out for sampled, out in calls if sampled]
    assert len(baseline) == 1 and len(samples) == 1  # one region kind
    assert baseline[0][0] == expected
    for seq in baseline[0][1] + samples[0][1]:
        assert not _repeats_an_ngram(seq, 2), seq


def _scst_log_probs_and_sampling_scores(monkeypatch, model, regions, ctx, refs):
    """Runs ``scst_loss`` and returns (its output, the (N,) summed sample log-probabilities its
    loss used, the sampled token ids, and per step the processed scores (N, V) generate sampled
    from and its raw logits (N, V))."""
    from dense3d.models.captioner import region_captioner

    lm = model._lm()
    real_generate, real_loss = lm.generate, region_captioner.scst_loss
    sampling = {}

    def generate_with_scores(*args, **kwargs):
        out = real_generate(*args, **kwargs, output_scores=True, output_logits=True, return_dict_in_generate=True)
        if kwargs.get("do_sample"):
            sampling.update(scores=out.scores, logits=out.logits, prompt_len=kwargs["input_ids"].shape[1],
                            sequences=out.sequences)
        return out.sequences

    used = {}

    def loss_spy(sample_log_probs, *args):
        used["log_probs"] = sample_log_probs
        return real_loss(sample_log_probs, *args)

    monkeypatch.setattr(lm, "generate", generate_with_scores)
    monkeypatch.setattr(region_captioner, "scst_loss", loss_spy)
    torch.manual_seed(0)
    out = model.scst_loss(regions, ctx, refs)
    monkeypatch.undo()
    eos = model.decoder.tokenizer.eos_token_id
    seqs = []
    for row in sampling["sequences"][:, sampling["prompt_len"]:].tolist():
        seqs.append(row[: row.index(eos) + 1] if eos in row else row)
    return out, used["log_probs"], seqs, sampling["scores"], sampling["logits"]


def _summed(step_scores, seqs) -> torch.Tensor:
    """(N,) sum over each sequence's tokens of log_softmax(scores of that step)[token]."""
    return torch.stack([sum(torch.log_softmax(step_scores[k][n].float(), -1)[tok] for k, tok in enumerate(s))
                        for n, s in enumerate(seqs)])


def test_scst_scores_samples_under_the_distribution_they_were_drawn_from(monkeypatch):
    """REINFORCE needs log p(sample) under the sampling distribution: with the repetition penalty and
    the n-gram block, generate() samples from the processed logits, so the loss's log-probabilities
    equal log_softmax(processed scores) at the sampled tokens (recomputed here from generate's own
    scores, step by step), not log_softmax(raw logits)."""
    from dense3d.models.captioner.generate import decoding_processors, processed_logits

    regions, ctx, caps = oracle_scene()
    model = tiny_captioner(seed=1)  # an untrained adapter whose greedy captions loop, so both settings bite
    with torch.no_grad():
        model.adapter.gates.fill_(0.5)
    model.no_repeat_ngram_size, model.repetition_penalty = 2, 1.3
    refs = [[[c] for c in row] for row in caps]
    out, used, seqs, scores, raw = _scst_log_probs_and_sampling_scores(monkeypatch, model, regions, ctx, refs)
    processed, unprocessed = _summed(scores, seqs), _summed(raw, seqs)
    assert torch.isfinite(used).all()  # no banned (-inf) token was ever picked
    assert torch.allclose(used.detach(), processed, atol=1e-4), (used, processed)
    assert not torch.allclose(used.detach(), unprocessed, atol=1e-2)  # the settings change the distribution
    out["loss_scst"].backward()  # gradients flow through the processed logits
    assert torch.isfinite(model.adapter.prompts.grad).all() and model.adapter.prompts.grad.abs().sum() > 0

    # a banned (-inf) token at a position without a label (padding after eos) drops out, not nan
    from dense3d.models.losses.caption import sequence_log_probs

    banned = torch.zeros(1, 3, 4)
    banned[0, 1, 0] = -torch.inf  # predicts position 2, unlabelled: its label stands in as id 0
    lp = sequence_log_probs(banned, torch.tensor([[-100, 1, -100]]))
    assert torch.isfinite(lp).all() and float(lp[0]) == pytest.approx(math.log(0.25))

    # both settings off: no processors, the raw logits scored as before (the same tensor)
    assert len(decoding_processors(0, 1.0)) == 0
    logits = torch.randn(2, 5, 7)
    assert processed_logits(logits, torch.zeros(2, 5, dtype=torch.long), decoding_processors(0, 1.0), 2) is logits
    model.zero_grad()
    model.no_repeat_ngram_size, model.repetition_penalty = 0, 1.0
    _, used, seqs, scores, raw = _scst_log_probs_and_sampling_scores(monkeypatch, model, regions, ctx, refs)
    assert torch.allclose(used.detach(), _summed(raw, seqs), atol=1e-4)


def test_relation_input_hint_reads_the_pairs_and_is_read_by_the_llm_not_trained_by_it():
    """``relation_input``: the relation head is a RelationHint over the (detached) pairs, not the
    visual tokens; its answer is added to the tokens through a map that starts at zero, so a
    model switched to it starts where it was; the caption loss trains that map and nothing of the
    classifier, the relation loss the classifier and nothing the LLM reads."""
    regions, ctx, _ = oracle_scene()
    caps = [["a red car next to the tree.", "a blue truck between the car and the person.", None, "a person."],
            ["a green truck behind the red car.", None, "a person near the road.", "a blue car."]]
    phrases = {"next_to": ["next to", "near"], "behind": ["behind"], "between": ["between"]}
    plain = tiny_captioner(relation_phrases=phrases)
    model = tiny_captioner(relation_phrases=phrases, relation_input=True)
    assert isinstance(model.relation_head, RelationHint)
    # same seed, same parts before the head: with the map at zero the tokens are the plain model's
    torch.testing.assert_close(model.encode(regions, ctx)[0], plain.encode(regions, ctx)[0])
    out = model(regions, ctx, caps)
    assert int(out["num_relation_terms"]) == 6
    out["loss_relation"].backward()
    assert model.relation_head.classifier[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in [*model.qformer.parameters(), *model.bica.parameters()])
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.adapter.gates.fill_(0.3)  # open, as after training: the visual tokens reach the loss
    model(regions, ctx, caps)["loss_caption"].backward()
    assert model.relation_head.embed.weight.grad.abs().sum() > 0  # the LLM learns to read the hint
    assert model.relation_head.classifier[0].weight.grad is None  # and does not train the classifier
    # the classifier learns the six labels; once the map is not zero the hint changes the tokens, also when generating
    opt = torch.optim.Adam(model.relation_head.classifier.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        model(regions, ctx, caps)["loss_relation"].backward()
        opt.step()
    assert float(model(regions, ctx, caps)["relation_accuracy"]) == 100.0
    with torch.no_grad():
        model.relation_head.embed.weight.normal_()
    assert not torch.allclose(model.encode(regions, ctx)[0], plain.encode(regions, ctx)[0])
    assert (model.encode(regions, ctx)[0][~regions.mask] == 0).all()
    assert len(model.generate(regions, ctx)) == 2


def test_relation_input_needs_phrases_and_neighbours():
    with pytest.raises(ConfigError, match="relation_input.*relation_phrases"):
        tiny_captioner(relation_input=True)
    with pytest.raises(ConfigError, match="relation_input.*num_neighbours"):
        tiny_captioner(neighbours=0, relation_phrases={"behind": ["behind"]}, relation_input=True)


@pytest.mark.parametrize("field,value,needs", [
    ("relation_hint_lr_scale", 5.0, "relation_input"), ("relation_hint_tokens", False, "relation_input"),
    ("motion_hint_lr_scale", 5.0, "motion_phrases"), ("hint_embed_lr_scale", 30.0, "relation_input or motion_phrases"),
    ("consensus_temperature", 0.5, "consensus_samples"), ("consensus_seed", 3, "consensus_samples")])
def test_settings_of_a_part_not_built_are_refused_not_ignored(field, value, needs):
    """A hint's rates without the hint, or the consensus samples' temperature without samples,
    would change nothing: one line naming the setting and what it needs."""
    def build(**options):
        return RegionCaptioner(decoder=tiny_llama_decoder(WORDS, hidden_size=H), adapter=LlamaAdapter(H, 4, num_layers=2, prompt_len=4),
                               qformer=RelationQFormer(64, 4, 1, num_queries=4, num_neighbours=3, region_dim=D, out_dim=H),
                               class_names={"box": CLASSES}, **options)

    with pytest.raises(ConfigError, match=f"RegionCaptioner: field '{field}'.*without {needs}"):
        build(**{field: value})
    enabled = {"relation_input": dict(relation_phrases={"behind": ["behind"]}, relation_input=True),
               "motion_phrases": dict(motion_phrases={"parked": ["parked"], "moving": ["moving"]}),
               "consensus_samples": dict(consensus_samples=2)}
    build(**{field: value}, **enabled[needs.split()[0]])  # with the part: accepted


def test_relation_input_on_a_kind_without_regions():
    regions, ctx, _ = oracle_scene()
    empty = dataclasses.replace(regions, features=regions.features[:, :0], geometry=regions.geometry[:, :0],
                                scores=regions.scores[:, :0], labels=regions.labels[:, :0], mask=regions.mask[:, :0])
    model = tiny_captioner(relation_phrases={"behind": ["behind"]}, relation_input=True)
    out = model(empty, ctx, [[], []])
    assert int(out["num_relation_terms"]) == 0 and out["loss_relation"].requires_grad
    assert model.encode(empty, ctx)[0].shape == (2, 0, 4, H)


def test_relation_hint_lr_scale_keeps_the_weights_and_moves_them_faster():
    """lr_scale: same seed, same weights and logits; one Adam step moves each weight about
    lr_scale times the rate (Adam's step is about the rate whatever the gradient's size)."""
    regions, ctx, _ = oracle_scene()
    qformer = RelationQFormer(64, 4, 1, num_queries=4, num_neighbours=3, region_dim=D, out_dim=H)
    hints = []
    for scale in (1.0, 5.0):
        torch.manual_seed(0)
        hints.append(RelationHint(64, D, 3, 4, 4, H, lr_scale=scale))
    torch.testing.assert_close(hints[0].classifier[0].weight, hints[1].classifier[0].weight)
    out = [h(regions, regions.features, qformer)[0] for h in hints]
    torch.testing.assert_close(out[0], out[1])
    moved = []
    for h, logits in zip(hints, out):
        before = h.classifier[0].weight.detach().clone()
        opt = torch.optim.Adam(h.parameters(), lr=1e-3)
        logits[..., 0].sum().backward()
        opt.step()
        moved.append((h.classifier[0].weight.detach() - before).abs().max().item())
    assert moved[0] == pytest.approx(1e-3, rel=0.01) and moved[1] == pytest.approx(5e-3, rel=0.01)
    with pytest.raises(ConfigError, match="lr_scale"):
        RelationHint(64, D, 3, 4, 4, H, lr_scale=0.0)


def test_relation_hint_on_the_pairs_alone_reads_no_feature():
    """tokens=False: the classifier reads the pair features only, so the regions' features and the
    Q-Former's relation tokens do not change its answer; it still learns the six labels."""
    regions, ctx, _ = oracle_scene()
    caps = [["a red car next to the tree.", "a blue truck between the car and the person.", None, "a person."],
            ["a green truck behind the red car.", None, "a person near the road.", "a blue car."]]
    model = tiny_captioner(relation_phrases={"next_to": ["next to", "near"], "behind": ["behind"], "between": ["between"]},
                           relation_input=True, relation_hint_tokens=False)
    hint = model.relation_head
    assert hint.own_in is None and hint.classifier[0].in_features == 3 * 64  # k = 3 pair tokens of 64
    f = model.bica([regions], [ctx]).objects[0]
    logits = hint(regions, f, model.qformer)[0]
    torch.testing.assert_close(hint(regions, torch.randn_like(f), model.qformer)[0], logits)
    opt = torch.optim.Adam(hint.parameters(), lr=3e-3)
    for _ in range(80):
        opt.zero_grad()
        model(regions, ctx, caps)["loss_relation"].backward()
        opt.step()
    assert float(model(regions, ctx, caps)["relation_accuracy"]) == 100.0


MOTIONS = {"parked": ["parked"], "moving": ["moving", "driving"], "standing": ["standing"]}


def test_motion_hint_reads_class_and_box_and_is_read_by_the_llm_not_trained_by_it():
    """``motion_phrases``: a MotionHint of each box's class and geometry; its answer reaches the
    visual tokens through a map that starts at zero (a model switched to it starts where it was);
    the motion loss, over the captions that state a motion word, trains the classifier and nothing
    the LLM reads; the caption loss trains the map and not the classifier. Events get no hint."""
    regions, ctx, _ = oracle_scene()
    caps = [["a red car parked near the road.", "a blue truck driving far away.", None, "a person standing."],
            ["a green truck is moving.", None, "a tree near the road.", "a blue car parked."]]
    plain = tiny_captioner()
    model = tiny_captioner(motion_phrases=MOTIONS)
    assert isinstance(model.motion_hint, MotionHint) and model.relation_head is None
    torch.testing.assert_close(model.encode(regions, ctx)[0], plain.encode(regions, ctx)[0])
    out = model(regions, ctx, caps)
    assert int(out["num_motion_terms"]) == 5  # the tree's caption states none, two have none at all
    out["loss_motion"].backward()
    assert model.motion_hint.classifier[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in [*model.qformer.parameters(), *model.bica.parameters()])
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.adapter.gates.fill_(0.3)  # open, as after training: the visual tokens reach the loss
    model(regions, ctx, caps)["loss_caption"].backward()
    assert model.motion_hint.embed.weight.grad.abs().sum() > 0
    assert model.motion_hint.classifier[0].weight.grad is None
    opt = torch.optim.Adam(model.motion_hint.classifier.parameters(), lr=3e-3)
    for _ in range(80):
        opt.zero_grad()
        model(regions, ctx, caps)["loss_motion"].backward()
        opt.step()
    assert float(model(regions, ctx, caps)["motion_accuracy"]) == 100.0
    with torch.no_grad():
        model.motion_hint.embed.weight.normal_()
    assert not torch.allclose(model.encode(regions, ctx)[0], plain.encode(regions, ctx)[0])
    assert (model.encode(regions, ctx)[0][~regions.mask] == 0).all()
    assert len(model.generate(regions, ctx)) == 2
    events = dataclasses.replace(regions, kind="event", geometry=regions.geometry[..., :2].sort(-1).values,
                                 labels=regions.labels % 2)
    visual, _, _, hints = model._encode([regions, events], [ctx, ctx])
    assert set(hints[0]) == {"motion"} and hints[1] == {}
    # no box at all: no motion term, and no error
    empty = dataclasses.replace(regions, features=regions.features[:, :0], geometry=regions.geometry[:, :0],
                                scores=regions.scores[:, :0], labels=regions.labels[:, :0], mask=regions.mask[:, :0])
    out = model(empty, ctx, [[], []])
    assert int(out["num_motion_terms"]) == 0 and out["loss_motion"].requires_grad
    assert "loss_motion" not in plain(regions, ctx, caps)


def test_motion_phrases_are_checked_and_need_box_class_names():
    with pytest.raises(ConfigError, match=r"motion_phrases\.moving"):
        tiny_captioner(motion_phrases={"parked": ["parked"], "moving": ["Parked"]})
    with pytest.raises(ConfigError, match="motion_phrases.*mapping"):
        tiny_captioner(motion_phrases=["parked", "moving"])
    torch.manual_seed(0)  # without the box kind's class names: built once they come, refused if they never do
    late = RegionCaptioner(decoder=tiny_llama_decoder(WORDS, hidden_size=H), adapter=LlamaAdapter(H, 4, num_layers=2, prompt_len=4),
                           qformer=RelationQFormer(64, 4, 1, num_queries=4, num_neighbours=3, region_dim=D, out_dim=H),
                           class_names={"event": ["horn"]}, motion_phrases=MOTIONS)
    regions, ctx, caps = oracle_scene()
    with pytest.raises(ConfigError, match="motion_phrases.*class_names.box"):
        late(regions, None, caps)
    late.add_class_names("box", CLASSES)
    assert late.motion_hint.classifier[0].in_features == len(CLASSES) + 10
    assert "loss_motion" in late(regions, None, caps)
    with pytest.raises(ConfigError, match="lr_scale"):
        MotionHint(4, 3, 4, H, lr_scale=-1.0)


def test_motion_hint_learns_the_motion_from_class_and_lateral_place():
    """As on the synthetic outdoor set: a car in a lane (|x| < 6 m) moves, one at the kerb (7-8 m,
    either side) is parked, a cone is placed whatever its place. The classifier of class and box
    alone learns it; the features do not tell the two sides of the road apart."""
    g = torch.Generator().manual_seed(0)
    n = 512
    cls = torch.randint(0, 2, (n,), generator=g)  # 0 car, 1 cone
    side = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    kerb = torch.rand(n, generator=g) < 0.5
    lateral = torch.where(kerb, 7 + torch.rand(n, generator=g), 6 * torch.rand(n, generator=g)) * side
    geo = torch.stack([lateral, torch.rand(n, generator=g) * 100 - 50, torch.zeros(n), torch.full((n,), 4.5),
                       torch.full((n,), 1.9), torch.full((n,), 1.6), torch.zeros(n)], -1)  # (n, 7)
    want = torch.where(cls == 1, 2, torch.where(kerb, 0, 1))  # parked, moving, placed
    regions = RegionFeatures("box", torch.zeros(1, n, 1), geo[None], torch.ones(1, n), cls[None], torch.ones(1, n, dtype=torch.bool))
    mirrored = box_motion_features(geo * torch.tensor([-1.0, 1, 1, 1, 1, 1, 1]))
    torch.testing.assert_close(mirrored[:, 3:], box_motion_features(geo)[:, 3:])  # |x|, sizes, heading
    torch.manual_seed(0)
    hint = MotionHint(2, 3, 4, H, lr_scale=5.0)
    opt = torch.optim.Adam(hint.parameters(), lr=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(hint(regions)[0][0], want).backward()
        opt.step()
    right = (hint(regions)[0][0].argmax(-1) == want).float().mean().item()
    assert right >= 0.95, right


def test_hint_embed_lr_scale_starts_at_zero_and_moves_the_maps_faster():
    """hint_embed_lr_scale: both hints' maps start at zero (the tokens are the plain model's) and one
    Adam step of the caption loss moves them about that many times the rate."""
    regions, ctx, caps = oracle_scene()
    phrases = {"next_to": ["next to", "near"], "behind": ["behind"]}
    moved = []
    for scale in (1.0, 10.0):
        model = tiny_captioner(relation_phrases=phrases, relation_input=True, motion_phrases=MOTIONS, hint_embed_lr_scale=scale)
        torch.testing.assert_close(model.encode(regions, ctx)[0], tiny_captioner().encode(regions, ctx)[0])
        with torch.no_grad():
            model.adapter.gates.fill_(0.3)
        embeds = [model.relation_head.embed, model.motion_hint.embed]
        opt = torch.optim.Adam([p for e in embeds for p in e.parameters()], lr=1e-3)
        model(regions, ctx, caps)["loss_caption"].backward()
        opt.step()
        moved.append([e.weight.detach().abs().max().item() for e in embeds])
    for plain, scaled in zip(*moved):
        assert plain == pytest.approx(1e-3, rel=0.01) and scaled == pytest.approx(1e-2, rel=0.01)
    with pytest.raises(ConfigError, match="embed_lr_scale"):
        tiny_captioner(motion_phrases=MOTIONS, hint_embed_lr_scale=float("nan"))
