-- t/distributed_local.t -- the parts of data-parallel training that need no
-- MPI: glia.distributed before init() (and without MPI at all), and the
-- data sharding of DataLoader and CharDataset:batch for N ranks. Runs
-- everywhere (t/distributed.t runs the rest under mpirun).
local t = require "t.tap"
local glia = require "glia"
local data = require "glia.data"
local nn = require "glia.nn"
local u = require "t.util"

local dist = require "glia.distributed"
t.ok(not dist.is_initialized(), "requiring glia.distributed does not start MPI")
t.error_like(function() dist.rank() end, "glia.distributed.rank: call glia.distributed.init%(%) first",
             "rank() before init() is an error saying what to call")
t.error_like(function() dist.all_reduce(glia.ones(2)) end, "all_reduce: call glia.distributed.init",
             "a collective before init() is an error")
t.error_like(function() dist.DataParallel(nn.Linear(2, 2)) end,
             "glia.distributed.DataParallel: call glia.distributed.init%(%) first",
             "DataParallel before init() is an error")

-- Without the MPI module (as on a machine without Open MPI): still loads,
-- and init() says what to install.
local exe = u.exe()
local out = u.sh(u.sh_quote(exe) .. " -e " .. u.sh_quote([[
package.cpath = "/nonexistent/?.so"
local dist = require "glia.distributed"
print("available", dist.available())
print(pcall(dist.init))
]]) .. " 2>&1")
t.ok(out:find("available\tfalse", 1, true), "without the MPI module, dist.available() is false")
t.ok(out:find("false\tglia.distributed.init: glia was built without MPI (install Open MPI with `make deps`", 1, true),
     "without the MPI module, init() is an error naming what to install")

-- ------------------------------------------------------------ DataLoader shards

local n = 48
local ds = data.TensorDataset(glia.arange(1, n + 1, 1):view(n, 1))
local function epoch_rows(loader)
  local rows = {}
  for xb in loader:iter() do rows[#rows + 1] = xb:view(xb:numel()):totable() end
  return rows
end
local whole = data.DataLoader(ds, { batch_size = 12, shuffle = true, seed = 5 })
local e1, e2 = epoch_rows(whole), epoch_rows(whole)
for _, N in ipairs { 2, 3, 4 } do
  local parts = {}
  for r = 0, N - 1 do
    local l = data.DataLoader(ds, { batch_size = 12, shuffle = true, seed = 5, rank = r, world_size = N })
    parts[r] = { epoch_rows(l), epoch_rows(l) }
  end
  local same, disjoint = true, true
  for e, ref in ipairs { e1, e2 } do
    for b = 1, #ref do
      local joined, seen = {}, {}
      for r = 0, N - 1 do
        local p = parts[r][e][b]
        same = same and #p == 12 / N
        for _, v in ipairs(p) do
          joined[#joined + 1] = v
          disjoint = disjoint and not seen[v]
          seen[v] = true
        end
      end
      same = same and table.concat(joined, ",") == table.concat(ref[b], ",")
    end
  end
  t.ok(same, N .. " ranks: each batch's parts, rank after rank, are the batch one process takes, in two epochs")
  t.ok(disjoint, N .. " ranks: no row is in two ranks' parts of a batch")
end
t.ok(table.concat(e1[1], ",") ~= table.concat(e2[1], ","), "the order is reshuffled each epoch")
local resumed = data.DataLoader(ds, { batch_size = 12, shuffle = true, seed = 5, rank = 1, world_size = 2 })
local fresh = data.DataLoader(ds, { batch_size = 12, shuffle = true, seed = 5, rank = 1, world_size = 2 })
epoch_rows(fresh)
resumed:set_epoch(2)
t.is(table.concat(epoch_rows(resumed)[3], ","), table.concat(epoch_rows(fresh)[3], ","),
     "set_epoch(2) on a new loader gives the shard epoch 2 gave (resume)")

t.error_like(function() data.DataLoader(ds, { batch_size = 12, rank = 0, world_size = 5 }) end,
             "world size 5 does not divide the batch size 12", "a world size that does not divide the batch is an error")
t.error_like(function() data.DataLoader(ds, { batch_size = 10, rank = 0, world_size = 2 }) end,
             "48 rows leave a last batch of 8 .* pass drop_last = true",
             "a last batch that does not split like the others is an error without drop_last")
t.error_like(function() data.DataLoader(ds, { batch_size = 12, rank = 2, world_size = 2 }) end,
             "rank must be an integer in 0..1", "a rank outside the world is an error")

-- ------------------------------------------------------------ CharDataset shards

local text = data.CharDataset(("the quick brown fox jumps over the lazy dog "):rep(20))
local xw = text:batch(8, 5, data.Generator(9))
local joined = {}
for r = 0, 3 do
  local xr = text:batch(8, 5, data.Generator(9), r, 4)
  t.is(xr:size(1), 2, "CharDataset:batch on rank " .. r .. " of 4 gives 2 of the 8 windows")
  joined[#joined + 1] = xr
end
t.ok(xw:size(1) == 8 and u.identical(glia.cat(joined, 1), xw),
     "the ranks' windows, rank after rank, are the 8 windows one process draws from the same generator")
t.error_like(function() text:batch(8, 5, data.Generator(9), 0, 3) end,
             "world size 3 does not divide the batch size 8", "CharDataset:batch refuses a world size that does not divide B")

t.done()
