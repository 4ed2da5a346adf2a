-- t/fuzz_corpus.t -- every file of the fuzzers' corpus (fuzz/corpus: the
-- seeds of fuzz/make_corpus.lua, and each input a fuzzer found crashing,
-- kept as crash-<symptom> once fixed) read the way the fuzz targets read
-- it: safetensors files by glia.load, copied and mapped, IDX files by
-- glia.read_idx. Each must load or fail with a message naming the file;
-- the sanitizer flavor of the suite turns any overread or undefined
-- behaviour into a failure of this file. Then the shapes behind the crashes
-- found, built directly.
package.path = "./?.lua;" .. package.path
local t = require "t.tap"
local u = require "t.util"
local glia = require "glia"

local function files(dir)
  local out = {}
  for name in u.sh("ls " .. u.sh_quote(dir)):gmatch("[^\n]+") do out[#out + 1] = name end
  return out
end

-- A clean outcome: a value, or nil and a message naming the file.
local function clean(path, ok, v, msg)
  if not ok then return false, "raised: " .. tostring(v) end
  if v == nil and not (type(msg) == "string" and msg:find(path, 1, true)) then
    return false, "failed without naming the file: " .. tostring(msg)
  end
  return true
end

for _, name in ipairs(files("fuzz/corpus/safetensors")) do
  local path = "fuzz/corpus/safetensors/" .. name
  for _, map in ipairs({ false, true }) do
    local ok, why = clean(path, pcall(glia.load, path, { mmap = map }))
    if not t.ok(ok, string.format("safetensors %s (mmap %s) loads or fails cleanly", name,
                                  tostring(map))) then t.diag(why) end
  end
end

for _, name in ipairs(files("fuzz/corpus/idx")) do
  local path = "fuzz/corpus/idx/" .. name
  local ok, why = clean(path, pcall(glia.read_idx, path))
  if not t.ok(ok, "IDX " .. name .. " reads or fails cleanly") then t.diag(why) end
end

-- crash-empty-huge-dims: an empty tensor whose other sizes multiply past
-- int64 overflowed computing its strides (UBSan, vm/tensor.c).
t.error_like(function() return glia.zeros(0, 2 ^ 40, 2 ^ 40) end, "too large",
             "an empty tensor with sizes whose product overflows is refused, not overflowed")
t.ok(glia.zeros(0, 2 ^ 20, 2 ^ 20):numel() == 0, "an empty tensor with large sizes still works")

t.done()
