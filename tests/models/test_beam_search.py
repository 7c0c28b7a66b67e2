"""Beam search: one hypothesis is greedy decoding; more find sequences greedy misses (the CLI: tests/inference)."""
import torch

from leantrain import data, models
from leantrain.models.decoding import beam_by_recompute, greedy_by_recompute


def _sequence_logp(forward, src, bos, tokens, eos=2):
    """Sum of log-probabilities of ``tokens`` (N, T) up to and including EOS, as the model scores them."""
    prefix = torch.cat([bos[:, None], tokens], dim=1)
    logp = forward(src, prefix[:, :-1]).float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    ended_before = torch.cumsum((tokens == eos).int(), dim=1) - (tokens == eos).int() > 0
    return logp.masked_fill(ended_before, 0.0).sum(dim=1)


def test_a_beam_of_one_is_greedy_decoding():
    torch.manual_seed(0)
    lines = data.load("polynomial:n=40")
    model = models.build("seq2seq:emb=8,hidden=16", lines).eval()
    src = lines.x_val[:6]
    assert torch.equal(model.generate(src, beam=1), model.generate(src, beam=1, cache=False))
    bos = torch.ones(len(src), dtype=torch.long)
    greedy = greedy_by_recompute(lambda s, p: model(s, p), src, bos, model.tgt_len - 1)
    beam = beam_by_recompute(lambda s, p: model(s, p), src, bos, model.tgt_len - 1, beam=1)
    assert torch.equal(greedy, beam)


def test_a_wider_beam_finds_the_likelier_sequence_greedy_misses():
    # Vocabulary: 0 pad, 1 bos, 2 eos, 3 "a", 4 "b". After bos, "a" looks best (0.6 vs 0.4), but every
    # continuation of "a" is uncertain (four ways) while "b" is surely followed by EOS: b,EOS (0.4) beats
    # a,x (0.6 x 0.25 = 0.15).
    def forward(src, prefix):
        logits = torch.full((prefix.shape[0], prefix.shape[1], 5), -30.0)
        for i, row in enumerate(prefix.tolist()):
            for t, token in enumerate(row):
                if token == 1:
                    logits[i, t, 3], logits[i, t, 4] = torch.tensor(0.6).log(), torch.tensor(0.4).log()
                elif token == 3:
                    logits[i, t, 2:5] = torch.tensor(0.25).log()
                    logits[i, t, 0] = torch.tensor(0.25).log()
                elif token == 4:
                    logits[i, t, 2] = 0.0
                else:
                    logits[i, t, 0] = 0.0
        return logits

    src, bos = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    greedy = greedy_by_recompute(forward, src, bos, 3)
    beam = beam_by_recompute(forward, src, bos, 3, beam=2)
    assert greedy[0, 0].item() == 3 and beam[0, :2].tolist() == [4, 2] and beam[0, 2].item() == 0
    assert _sequence_logp(forward, src, bos, beam) > _sequence_logp(forward, src, bos, greedy)

