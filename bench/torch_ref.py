# The benchmark workloads of WORKLOADS.md, written in plain PyTorch, for side-by-side ratios.
# Needs Debian's python3-torch (1.13) and python3-numpy: run it with /usr/bin/python3.
# Usage: /usr/bin/python3 torch_ref.py WORKLOAD   (one workload per process, so maxrss is its own)
# Prints one line: the workload, its figures, and the process's peak RSS.
# glia's copy of the shared PyTorch reference, plus gelu_tanh_16M, and the GPT block's GELU in its tanh
# form, the one glia's GPT uses, so both sides compute the same model.
import sys, time, math, resource, gzip, struct
import torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(int(__import__('os').environ.get('GLIA_NUM_THREADS', '2'))); torch.manual_seed(0)
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def timeit(f, reps):
    f(); t = time.perf_counter()
    for _ in range(reps): f()
    return (time.perf_counter() - t) / reps

def attn_naive(q, k, v, causal=True):
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]; m = torch.ones(n, n, dtype=torch.bool).triu(1)
        s = s.masked_fill(m, float('-inf'))
    return torch.softmax(s, -1) @ v

class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__(); s.h = h
        s.ln1 = nn.LayerNorm(d); s.qkv = nn.Linear(d, 3*d); s.proj = nn.Linear(d, d)
        s.ln2 = nn.LayerNorm(d); s.fc = nn.Linear(d, 4*d); s.fc2 = nn.Linear(4*d, d)
    def forward(s, x, cache=None):
        B, T, C = x.shape
        q, k, v = s.qkv(s.ln1(x)).split(C, -1)
        q, k, v = [t.view(B, T, s.h, C//s.h).transpose(1, 2) for t in (q, k, v)]
        if cache is not None:
            if 'k' in cache: k = torch.cat([cache['k'], k], 2); v = torch.cat([cache['v'], v], 2)
            cache['k'], cache['v'] = k, v
            a = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(C//s.h), -1) @ v
        else:
            a = attn_naive(q, k, v)
        x = x + s.proj(a.transpose(1, 2).reshape(B, T, C))
        return x + s.fc2(F.gelu(s.fc(s.ln2(x)), approximate='tanh'))
class GPT(nn.Module):
    def __init__(s, V=73, d=256, L=4, h=4, T=256):
        super().__init__()
        s.tok = nn.Embedding(V, d); s.pos = nn.Embedding(T, d)
        s.blocks = nn.ModuleList([Block(d, h) for _ in range(L)]); s.lnf = nn.LayerNorm(d); s.head = nn.Linear(d, V)
    def forward(s, idx, caches=None, pos0=0):
        x = s.tok(idx) + s.pos(torch.arange(pos0, pos0 + idx.shape[1]))
        for i, b in enumerate(s.blocks): x = b(x, None if caches is None else caches[i])
        return s.head(s.lnf(x))

w = sys.argv[1]
if w.startswith('gemm_'):   # gemm_N: C = A @ B, square fp32
    n = int(w.split('_')[1]); a, b = torch.randn(n, n), torch.randn(n, n)
    t = timeit(lambda: a @ b, 10)
    print(f"{w} {t*1e3:.2f} ms  {2*n**3/t/1e9:.1f} GFLOP/s  maxrss {rss():.0f} MB")
elif w in ('add_16M', 'gelu_16M', 'gelu_tanh_16M'):   # 16M floats: a + b with b broadcast over rows (4096 x 4096 + 4096), or gelu(a)
    a, b = torch.randn(4096, 4096), torch.randn(4096)
    f = (lambda: a + b) if w == 'add_16M' else (lambda: F.gelu(a)) if w == 'gelu_16M' else (lambda: F.gelu(a, approximate='tanh'))
    t = timeit(f, 10)
    print(f"{w} {t*1e3:.2f} ms  {2*4*4096*4096/t/1e9:.1f} GB/s (read+write)  maxrss {rss():.0f} MB")
elif w.startswith('attn'):   # attn_fwd_N / attn_fwdbwd_N : B=1,H=8,d=64 causal fp32
    _, mode, n = w.split('_'); n = int(n)
    q, k, v = [torch.randn(1, 8, n, 64, requires_grad=(mode == 'fwdbwd')) for _ in range(3)]
    if mode == 'fwd':
        with torch.no_grad(): t = timeit(lambda: attn_naive(q, k, v), 5)
    else:
        def step():
            o = attn_naive(q, k, v); o.sum().backward()
        t = timeit(step, 3)
    flops = 4 * 8 * n * n * 64 / 2 * (1 if mode == 'fwd' else 3.5)   # causal: half the tiles
    print(f"{w} {t*1e3:.2f} ms  {flops/t/1e9:.1f} GFLOP/s(useful)  maxrss {rss():.0f} MB")
elif w.startswith(('conv2d_', 'dwconv2d_')):   # conv2d: B=32 64->64 32x32 3x3 pad 1; dwconv2d: B=32 256 ch 32x32 5x5 pad 2 groups 256
    kind, mode = w.split('_')
    C, k, g = (64, 3, 1) if kind == 'conv2d' else (256, 5, 256)
    x = torch.randn(32, C, 32, 32, requires_grad=(mode == 'fwdbwd'))
    wt = torch.randn(C, C // g, k, k, requires_grad=(mode == 'fwdbwd')); b = torch.randn(C, requires_grad=(mode == 'fwdbwd'))
    gy = torch.randn(32, C, 32, 32)
    reps = (10 if mode == 'fwd' else 5) if g == 1 else (3 if mode == 'fwd' else 1)   # torch's depth-wise conv is slow
    if mode == 'fwd':
        with torch.no_grad(): t = timeit(lambda: F.conv2d(x, wt, b, padding=k // 2, groups=g), reps)
    else:
        t = timeit(lambda: F.conv2d(x, wt, b, padding=k // 2, groups=g).backward(gy), reps)
    flops = 2 * 32 * C * 32 * 32 * (C // g) * k * k * (1 if mode == 'fwd' else 3)
    print(f"{w} {t*1e3:.2f} ms  {flops/t/1e9:.1f} GFLOP/s  maxrss {rss():.0f} MB")
elif w == 'gpt_train':     # V=73 d=256 L=4 h=4 T=256 B=16 AdamW
    m = GPT(); opt = torch.optim.AdamW(m.parameters(), lr=3e-4)
    x = torch.randint(0, 73, (16, 256)); y = torch.randint(0, 73, (16, 256))
    def step():
        loss = F.cross_entropy(m(x).view(-1, 73), y.view(-1)); opt.zero_grad(); loss.backward(); opt.step()
    t = timeit(step, 10)
    print(f"gpt_train {t*1e3:.1f} ms/step  {16*256/t:.0f} tok/s  params {sum(p.numel() for p in m.parameters())}  maxrss {rss():.0f} MB")
elif w == 'gpt_decode':    # batch 1, generate 256 tokens with KV cache
    m = GPT().eval()
    def gen():
        caches = [dict() for _ in range(4)]; idx = torch.zeros(1, 1, dtype=torch.long)
        with torch.no_grad():
            for p in range(255):
                lg = m(idx, caches, p); idx = lg[:, -1].argmax(-1, keepdim=True)
    t = timeit(gen, 3)
    print(f"gpt_decode {255/t:.0f} tok/s  maxrss {rss():.0f} MB")
elif w == 'moe':           # T=4096 d=256 E=8 hidden=512 top-2, fwd+bwd
    T, d, E, H, K = 4096, 256, 8, 512, 2
    router = nn.Linear(d, E, bias=False)
    experts = nn.ModuleList([nn.Sequential(nn.Linear(d, H), nn.GELU(), nn.Linear(H, d)) for _ in range(E)])
    x = torch.randn(T, d, requires_grad=True)
    def step():
        p = torch.softmax(router(x), -1); w, e = p.topk(K, -1); w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for i in range(E):
            tok, slot = (e == i).nonzero(as_tuple=True)
            if tok.numel(): out.index_add_(0, tok, experts[i](x[tok]) * w[tok, slot, None])
        frac = F.one_hot(e[:, 0], E).float().mean(0); aux = E * (frac * p.mean(0)).sum()
        (out.sum() + aux).backward()
    t = timeit(step, 5)
    print(f"moe {t*1e3:.1f} ms fwd+bwd  {T/t:.0f} tok/s  maxrss {rss():.0f} MB")
elif w == 'acm_4096':      # the dense gpt_train MLP (256->1024->256 GELU) on 4096 tokens, forward: the ACM baseline
    x = torch.randn(4096, 256); fc, fc2 = nn.Linear(256, 1024), nn.Linear(1024, 256)
    with torch.no_grad(): t = timeit(lambda: fc2(F.gelu(fc(x))), 20)
    print(f"acm_4096 {t*1e3:.2f} ms dense MLP fwd  maxrss {rss():.0f} MB")
elif w == 'mlp_fmnist':    # 784-512-256-10, batch 128, Adam 1e-3, 1 epoch, then test accuracy
    def idx(path, off):
        with gzip.open(path) as f: return f.read()[off:]
    base = '/usr/share/datasets/fashion-mnist/'
    X = torch.frombuffer(bytearray(idx(base + 'train-images-idx3-ubyte.gz', 16)), dtype=torch.uint8).float().view(-1, 784) / 255
    Y = torch.frombuffer(bytearray(idx(base + 'train-labels-idx1-ubyte.gz', 8)), dtype=torch.uint8).long()
    Xt = torch.frombuffer(bytearray(idx(base + 't10k-images-idx3-ubyte.gz', 16)), dtype=torch.uint8).float().view(-1, 784) / 255
    Yt = torch.frombuffer(bytearray(idx(base + 't10k-labels-idx1-ubyte.gz', 8)), dtype=torch.uint8).long()
    m = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-3); t = time.perf_counter()
    perm = torch.randperm(60000)
    for i in range(0, 60000, 128):
        b = perm[i:i+128]; loss = F.cross_entropy(m(X[b]), Y[b]); opt.zero_grad(); loss.backward(); opt.step()
    t = time.perf_counter() - t
    with torch.no_grad(): acc = (m(Xt).argmax(-1) == Yt).float().mean().item()
    print(f"mlp_fmnist epoch {t:.2f} s  test acc {acc*100:.1f}%  maxrss {rss():.0f} MB")
