-- t/grad_hooks.t -- t:register_grad_hook(fn): backward calls fn once per
-- leaf when the leaf's gradient is final, before the rest of the backward
-- runs (what data-parallel training starts its communication on).
local t = require "t.tap"
local glia = require "glia"

do -- once per leaf, with the full gradient, even when the leaf is used twice
  local x = glia.tensor{1, 2, 3}:requires_grad()
  local w = glia.tensor{2, 2, 2}:requires_grad()
  local calls, seen = {}, {}
  x:register_grad_hook(function(leaf)
    calls[#calls + 1] = "x"
    seen.x = leaf.grad:totable()
  end)
  w:register_grad_hook(function(leaf)
    calls[#calls + 1] = "w"
    seen.w = leaf.grad:totable()
  end)
  -- x reaches the loss through two paths: x*w and x*x
  glia.sum(x * w + x * x):backward()
  t.is(#calls, 2, "a backward calls each leaf's hook once, though x feeds two nodes")
  t.near(seen.x, {4, 6, 8}, 1e-6, "x's hook sees the gradient of both paths (w + 2x): final")
  t.near(seen.w, {1, 2, 3}, 1e-6, "w's hook sees its gradient")
  calls = {}
  glia.sum(x * w):backward()
  t.is(#calls, 2, "a second backward calls the hooks once more")
  t.near(seen.x, {6, 8, 10}, 1e-6, "the hook sees .grad after this backward added into it")
end

do -- narrows of a leaf add into one buffer (scatter nodes): still one call, at the end
  local x = glia.tensor{1, 2, 3}:requires_grad()
  local n, got = 0, nil
  x:register_grad_hook(function(leaf) n = n + 1; got = leaf.grad:totable() end)
  glia.sum(x:narrow(1, 1, 1) * 2 + x:narrow(1, 2, 2) * 3):backward()
  t.is(n, 1, "a leaf reached through two narrows gets one call")
  t.near(got, {4, 3, 3}, 1e-6, "with the gradient of both narrows (the first broadcast over two)")
end

do -- a hook runs while the rest of the backward is still to run
  -- y = sum(w2 * relu(w1 * x)): w2's gradient is final after the first node,
  -- before w1's node runs; the hook for w2 fires first.
  local x = glia.tensor{1, -2, 3}
  local w1 = glia.tensor{1, 1, 1}:requires_grad()
  local w2 = glia.tensor{3, 4, 5}:requires_grad()
  local order = {}
  w1:register_grad_hook(function() order[#order + 1] = "w1" end)
  w2:register_grad_hook(function(leaf)
    order[#order + 1] = "w2"
    t.is(w1.grad, nil, "when w2's hook runs, w1's gradient is not computed yet")
  end)
  glia.sum(w2 * glia.relu(w1 * x)):backward()
  t.is(table.concat(order, ","), "w2,w1", "the leaf nearest the loss is final first")
end

do -- leaves outside the graph, removal, backward on a leaf itself
  local a = glia.tensor{1, 2}:requires_grad()
  local b = glia.tensor{1, 2}:requires_grad()
  local n = 0
  a:register_grad_hook(function() n = n + 1 end)
  b:register_grad_hook(function() n = n + 100 end)
  glia.sum(a * 2):backward()
  t.is(n, 1, "a leaf the loss does not depend on gets no call")
  a:register_grad_hook(nil)
  glia.sum(a * 2):backward()
  t.is(n, 1, "register_grad_hook(nil) removes the hook")
  b:backward(glia.ones(2))
  t.is(n, 101, "backward on the hooked leaf itself calls its hook")
end

do -- errors
  local x = glia.tensor{1, 2}:requires_grad()
  x:register_grad_hook(function() error("boom in hook") end)
  t.error_like(function() glia.sum(x * x):backward() end, "grad hook of {2}.-boom in hook",
               "an error in a hook stops backward with the hook's message")
  local y = x * 2
  t.error_like(function() y:register_grad_hook(print) end, "not a leaf",
               "a hook on a non-leaf is refused")
  t.error_like(function() x:register_grad_hook(42) end, "must be a function or nil, got number",
               "a hook that is not a function is refused")
end

do -- a temporary leaf whose only owner is the graph is kept alive for its hook
  local got
  local function loss()
    local tmp = glia.tensor{1, 2, 3}:requires_grad()
    tmp:register_grad_hook(function(leaf) got = leaf.grad:totable() end)
    return glia.sum(tmp * 3)
  end
  local l = loss()
  collectgarbage()
  l:backward()
  t.near(got, {3, 3, 3}, 1e-6, "a leaf owned only by the graph still gets its hook, with its gradient")
end

do -- a hook registered by a hook, during a backward, waits for the next backward
  local a = glia.tensor{1, 2}:requires_grad()
  local b = glia.tensor{3, 4}:requires_grad()
  local calls = {}
  a:register_grad_hook(function()
    calls[#calls + 1] = "a"
    b:register_grad_hook(function() calls[#calls + 1] = "b" end)
  end)
  glia.sum(b * glia.relu(a * 2)):backward()
  t.is(table.concat(calls, ","), "a", "a hook added during a backward is not called by it")
  glia.sum(b * glia.relu(a * 2)):backward()
  t.is(table.concat(calls, ","), "a,b,a", "the next backward calls it once, when b's gradient is final")
end

do -- a hooked tensor that is gone takes its hook (and what the hook holds) with it
  local held = setmetatable({}, { __mode = "k" })
  do
    local x = glia.tensor{1, 2}:requires_grad()
    local big = {}
    held[big] = true
    x:register_grad_hook(function() return big end)
  end
  collectgarbage()
  collectgarbage()
  t.is(next(held), nil, "once the tensor is collected, nothing keeps its hook's upvalues alive")
end

do -- a backward from inside a grad hook is a clear error, not a corrupted graph
  local x = glia.tensor{1, 2}:requires_grad()
  local w = glia.tensor{5, 7}:requires_grad()
  local h, l2
  local function graphs() -- l2 shares h's node with the outer graph
    h = x * 2
    l2 = glia.sum(h * 3)
  end
  graphs()
  local inner_err
  w:register_grad_hook(function()
    local ok, err = pcall(function() l2:backward() end)
    inner_err = not ok and tostring(err)
  end)
  local ok, err = pcall(function() glia.sum(h * w):backward() end)
  t.ok(inner_err and inner_err:find("called during another backward", 1, true),
       "a backward run by a grad hook raises 'called during another backward': " .. tostring(inner_err))
  t.ok(ok, "the outer backward still completes once the hook caught it: " .. tostring(err))
  t.near(x.grad:totable(), {10, 14}, 1e-6, "the outer backward's gradients are whole")
  graphs()
  w:register_grad_hook(function() l2:backward() end)
  x.grad, w.grad = nil, nil
  ok, err = pcall(function() glia.sum(h * w):backward() end)
  t.ok(not ok and tostring(err):find("called during another backward", 1, true),
       "an uncaught one fails the outer backward with that error: " .. tostring(err))
  w:register_grad_hook(nil)
  graphs()
  x.grad = nil
  l2:backward()
  t.near(x.grad:totable(), {6, 6}, 1e-6, "the context stays usable: the next backward runs")
end

t.done()
