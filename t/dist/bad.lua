-- t/dist/bad.lua CASE -- a bad call on one or all ranks: every rank prints
-- "rank <r> error <message>" (pcall), for t/distributed.t.
local glia = require "glia"
local dist = require "glia.distributed"
local r = dist.init()
local cases = {
  shape = function() dist.all_reduce(glia.ones(4, 3 + r)) end,
  dtype = function() dist.all_reduce(r == 1 and glia.ones(3):to("i64") or glia.ones(3)) end,
  strided = function()
    dist.broadcast(r == 0 and glia.ones(3, 4):transpose(1, 2) or glia.ones(4, 3))
  end,
  call = function() (r == 0 and dist.all_reduce or dist.broadcast)(glia.ones(3)) end,
  split = function() dist.reduce_scatter(glia.ones(3)) end,
  root = function() dist.broadcast(glia.ones(3), 5) end,
  op = function() dist.all_reduce(glia.ones(3), "max") end,
  -- bad on one rank only: the other rank must raise the same error too
  op_one = function() dist.all_reduce(glia.ones(3), r == 1 and "max" or "sum") end,
  freed_one = function()
    local x = glia.ones(3)
    if r == 0 then x:free() end
    dist.all_reduce(x)
  end,
  not_tensor_one = function() dist.all_gather(r == 1 and 42 or glia.ones(2)) end,
  freed_scatter_one = function()
    local x = glia.ones(4)
    if r == 1 then x:free() end
    dist.reduce_scatter(x)
  end,
  root_wraps = function() dist.broadcast(glia.ones(3), 2^32) end,
  root_float_one = function() dist.broadcast(glia.ones(3), r == 1 and 0.5 or 0) end,
  gather_shape = function() dist.all_gather(glia.ones(2 + r)) end,
  batch = function()
    local data = require "glia.data"
    data.DataLoader(data.TensorDataset(glia.ones(12, 2)),
                    { batch_size = 3, rank = r, world_size = dist.world_size() })
  end,
}
local ok, err = pcall(cases[arg[1]])
print(("rank %d error %s"):format(r, ok and "none" or tostring(err)))
-- the ranks go on together after the error
-- (and pair up: 2 ranks sum to 2)
print(("rank %d after %g"):format(r, dist.all_reduce(glia.ones(1)):item()))
