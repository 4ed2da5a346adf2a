/*
** vm/autograd.c -- define-by-run reverse-mode autograd.
**
** Every differentiable op run in grad mode on an input that needs grad
** attaches a node to its output (t->grad_fn). A node holds a reference to
** each forward input (so the graph is a DAG owned by the tensors that
** survive: dropping the last output frees its history) and detached aliases
** of what it saved, with the storage version at save time. Backward counts
** each node's consumers, then runs nodes in dependency order, reduces each
** input gradient to the input's shape, and accumulates it into the next
** node's gout or into a leaf's .grad. Without keep_graph, each node drops
** its inputs and saved tensors once it has run. A leaf marked grad_hook also
** counts the nodes that add into its .grad, and the context's grad hook is
** called for it when the last of them has run (its gradient is then final).
*/
#include "glia_impl.h"

#include <stdlib.h>

bool glia_tensor_needs_grad(const glia_tensor *t) {
  return t && (t->requires_grad || t->grad_fn != NULL);
}

glia_node *glia_node_begin(glia_ctx *G, const char *name, glia_backward_fn bw, int n,
                           glia_tensor *const *in, glia_status *st) {
  *st = GLIA_OK;
  if (!G->grad_mode) return NULL;
  bool any = false;
  for (int i = 0; i < n; i++) any |= glia_tensor_needs_grad(in[i]);
  if (!any) return NULL;
  glia_node *node = glia_malloc(G, sizeof *node);
  if (!node) {
    *st = glia_fail_nomem(G, sizeof *node, name);
    return NULL;
  }
  memset(node, 0, sizeof *node);
  node->refcount = 1;
  node->name = name;
  node->backward = bw;
  node->ninputs = n;
  node->seq = ++G->node_seq;
  for (int i = 0; i < n; i++) {
    node->input[i] = glia_tensor_retain(in[i]);
    node->needs[i] = glia_tensor_needs_grad(in[i]);
  }
  return node;
}

glia_status glia_node_save(glia_ctx *G, glia_node *node, glia_tensor *t) {
  if (GLIA_NEVER(node->nsaved >= GLIA_NODE_MAX_SAVED))
    return glia_fail(G, GLIA_EINTERNAL, "%s: too many saved tensors", node->name);
  glia_tensor *a = NULL;
  if (t) TRY(glia_tensor_detach(G, t, &a));
  node->saved_version[node->nsaved] = t && t->storage ? t->storage->version : 0;
  node->saved[node->nsaved++] = a;
  return GLIA_OK;
}

void glia_node_finish(glia_node *node, glia_tensor *out) {
  node->out_ndim = out->ndim;
  memcpy(node->out_size, out->size, sizeof out->size);
  glia_node_release(out->grad_fn);
  out->grad_fn = node;
}

glia_status glia_node_end(glia_node *node, glia_status st, glia_tensor *out) {
  if (st == GLIA_OK) glia_node_finish(node, out);
  else glia_node_release(node);
  return st;
}

static void node_drop_history(glia_node *node) {
  for (int i = 0; i < node->ninputs; i++) {
    glia_tensor_release(node->input[i]);
    node->input[i] = NULL;
  }
  for (int i = 0; i < node->nsaved; i++) {
    glia_tensor_release(node->saved[i]);
    node->saved[i] = NULL;
  }
  node->ninputs = -1; /* marks a freed graph */
  node->nsaved = 0;
  free(node->extra);
  node->extra = NULL;
}

/* Nodes whose last reference is gone, waiting to drop their history. A
** node's inputs may hold the last references to other nodes: releasing them
** recursively would nest one level per op, and a graph a million ops deep
** would overflow the C stack. So the outermost release drains a work list
** and the nested ones only add to it. Per thread: each context is used by
** one thread at a time, and pool workers never release. */
static __thread glia_node *dying;
static __thread bool draining;

void glia_node_release(glia_node *node) {
  if (!node || --node->refcount > 0) return;
  node->next_dying = dying;
  dying = node;
  if (draining) return;
  draining = true;
  while (dying) {
    glia_node *n = dying;
    dying = n->next_dying;
    node_drop_history(n); /* may add to the list */
    glia_tensor_release(n->gout);
    free(n);
  }
  draining = false;
}

glia_status glia_node_saved(glia_ctx *G, glia_node *node, int i, glia_tensor **out) {
  glia_tensor *t = node->saved[i];
  if (t && t->storage && t->storage->version != node->saved_version[i])
    return glia_fail(G, GLIA_EGRAD,
                     "%s: a tensor saved for backward was modified in place "
                     "(version %llu, saved at %llu)",
                     node->name, (unsigned long long)t->storage->version,
                     (unsigned long long)node->saved_version[i]);
  *out = t;
  return GLIA_OK;
}

/* ========================================================= backward */

/* A growable array of nodes (or of tensors, for the hooked leaves). */
typedef struct {
  void **v;
  size_t n, cap;
} node_vec;

static bool vec_push(node_vec *s, void *node) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    void **v = realloc(s->v, cap * sizeof *v);
    if (!v) return false;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = node;
  return true;
}

/* Routes one input gradient, in the input's shape, into the producing
** node's gout or the leaf's grad. Consumes the reference r (so an unshared
** gradient can be adopted instead of copied). */
static glia_status route_grad(glia_ctx *G, const glia_node *node, glia_tensor *in,
                              glia_tensor *r, node_vec *ready) {
  if (GLIA_NEVER(!glia_has_shape(r, in->ndim, in->size))) {
    glia_status st = glia_fail(G, GLIA_EINTERNAL,
                               "glia.backward: %s gave a gradient %s for an input %s",
                               node->name, glia_shape_str(r), glia_shape_str(in));
    glia_tensor_release(r);
    return st;
  }
  glia_status st = GLIA_OK;
  if (in->grad_fn) {
    glia_node *nx = in->grad_fn;
    st = glia_accumulate(G, &nx->gout, r);
    if (st == GLIA_OK && --nx->pending == 0 && !vec_push(ready, nx))
      st = glia_fail_nomem(G, 0, "backward");
  } else if (in->requires_grad) {
    st = glia_accumulate(G, &in->grad, r);
  }
  glia_tensor_release(r);
  return st;
}

/* A node with a scatter function adds its gradient straight into input 0's
** accumulator, made zero-filled by the first such node to reach it. */
static glia_status scatter_grad(glia_ctx *G, glia_node *node, glia_tensor *g, node_vec *ready) {
  glia_tensor *in = node->input[0], **acc = NULL;
  if (!node->needs[0] || !in) return GLIA_OK;
  if (in->grad_fn) acc = &in->grad_fn->gout;
  else if (in->requires_grad) acc = &in->grad;
  else return GLIA_OK;
  if (!*acc) TRY(glia_tensor_zeros(G, GLIA_DTYPE_F32, in->ndim, in->size, acc));
  TRY(node->scatter(G, node, g, *acc));
  if (in->grad_fn && --in->grad_fn->pending == 0 && !vec_push(ready, in->grad_fn))
    return glia_fail_nomem(G, 0, "backward");
  return GLIA_OK;
}

/* Whether input i of node is a leaf whose grad the hook waits for. */
static bool is_hooked_leaf(const glia_node *node, int i) {
  const glia_tensor *in = node->input[i];
  return node->needs[i] && in && !in->grad_fn && in->requires_grad && in->grad_hook &&
         in->G->grad_hook;
}

/* `leaves` collects the hooked leaves reached (as glia_tensor pointers, each
** retained: dropping the graph may release a leaf's last other owner). */
static glia_status run_backward(glia_ctx *G, glia_tensor *root, glia_tensor *gout,
                                int keep_graph, node_vec *all, node_vec *ready,
                                node_vec *leaves) {
  glia_node *rn = root->grad_fn;
  /* Pass 1: reach every node, counting consumers (pending). */
  if (rn->ninputs < 0)
    return glia_fail(G, GLIA_EGRAD,
                     "glia.backward: the graph was already freed by an earlier "
                     "backward (pass keep_graph to backward twice)");
  /* `all` holds a reference to each node: dropping a node's history may
  ** release the last tensor that owned an upstream node. */
  if (!vec_push(all, rn)) return glia_fail_nomem(G, 0, "backward");
  rn->refcount++;
  rn->pending = 0;
  rn->seq |= (uint64_t)1 << 63; /* visited mark, cleared below */
  for (size_t k = 0; k < all->n; k++) {
    glia_node *node = all->v[k];
    for (int i = 0; i < node->ninputs; i++) {
      glia_tensor *in = node->input[i];
      if (is_hooked_leaf(node, i)) {
        if (!in->hook_mark) {
          if (!vec_push(leaves, in)) return glia_fail_nomem(G, 0, "backward");
          glia_tensor_retain(in);
          in->hook_mark = true;
          in->hook_pending = 0;
        }
        in->hook_pending++;
      }
      if (!node->needs[i] || !in || !in->grad_fn) continue;
      glia_node *nx = in->grad_fn;
      if (nx->ninputs < 0)
        return glia_fail(G, GLIA_EGRAD,
                         "glia.backward: part of the graph (%s) was already freed by "
                         "an earlier backward",
                         nx->name);
      if (!(nx->seq >> 63)) {
        nx->seq |= (uint64_t)1 << 63;
        nx->pending = 0;
        if (!vec_push(all, nx)) return glia_fail_nomem(G, 0, "backward");
        nx->refcount++;
      }
      nx->pending++;
    }
  }
  /* Pass 2: run nodes whose consumers are all done. */
  glia_tensor_release(rn->gout);
  rn->gout = glia_tensor_retain(gout);
  if (!vec_push(ready, rn)) return glia_fail_nomem(G, 0, "backward");
  while (ready->n > 0) {
    glia_node *node = ready->v[--ready->n];
    glia_tensor *din[GLIA_NODE_MAX_IN] = {0};
    glia_tensor *g = node->gout;
    node->gout = NULL;
    glia_status st = node->scatter ? scatter_grad(G, node, g, ready)
                                   : node->backward(G, node, g, din);
    for (int i = 0; i < node->ninputs && st == GLIA_OK; i++) {
      if (node->needs[i] && din[i]) {
        st = route_grad(G, node, node->input[i], din[i], ready);
        din[i] = NULL;
      }
    }
    for (int i = 0; i < GLIA_NODE_MAX_IN; i++) glia_tensor_release(din[i]);
    glia_tensor_release(g);
    for (int i = 0; i < node->ninputs && st == GLIA_OK; i++)
      if (is_hooked_leaf(node, i) && node->input[i]->hook_mark && /* hooked before pass 1 */
          --node->input[i]->hook_pending == 0)
        st = G->grad_hook(G, G->grad_hook_ud, node->input[i]);
    if (st != GLIA_OK) return st;
    if (!keep_graph) node_drop_history(node);
  }
  return GLIA_OK;
}

glia_status glia_backward(glia_ctx *G, glia_tensor *t, glia_tensor *gout, int keep_graph) {
  TRY(glia_check_live(G, "glia.backward", t));
  /* Pass 1 marks nodes in place (seq bit 63, pending): a nested pass over an
  ** overlapping graph would reset counts the outer pass is still using. */
  if (G->in_backward)
    return glia_fail(G, GLIA_EGRAD,
                     "glia.backward: called during another backward (from a grad hook?)");
  if (!glia_tensor_needs_grad(t))
    return glia_fail(G, GLIA_EGRAD,
                     "glia.backward: tensor %s does not require grad (no input of its "
                     "graph called requires_grad())",
                     glia_shape_str(t));
  glia_tensor *g = NULL;
  if (gout) {
    if (!glia_has_shape(gout, t->ndim, t->size))
      return glia_fail(G, GLIA_ESHAPE, "glia.backward: gradient %s does not match tensor %s",
                       glia_shape_str(gout), glia_shape_str(t));
    TRY(glia_tensor_contiguous_as(G, gout, GLIA_DTYPE_F32, &g));
  } else {
    if (glia_tensor_numel(t) != 1)
      return glia_fail(G, GLIA_ESHAPE,
                       "glia.backward: implicit gradient needs a 1-element tensor, got %s "
                       "(pass a gradient)",
                       glia_shape_str(t));
    TRY(glia_tensor_new(G, GLIA_DTYPE_F32, t->ndim, t->size, &g));
    *(float *)g->storage->data = 1.0f;
  }
  glia_status st = GLIA_OK;
  int old = glia_ctx_set_grad_mode(G, 0);
  G->in_backward = true;
  if (!t->grad_fn) {
    st = glia_accumulate(G, &t->grad, g);
    if (st == GLIA_OK && t->grad_hook && G->grad_hook) st = G->grad_hook(G, G->grad_hook_ud, t);
  } else {
    node_vec all = {0}, ready = {0}, leaves = {0};
    st = run_backward(G, t, g, keep_graph, &all, &ready, &leaves);
    for (size_t k = 0; k < leaves.n; k++) {
      glia_tensor *leaf = leaves.v[k];
      leaf->hook_mark = false;
      glia_tensor_release(leaf);
    }
    free(leaves.v);
    for (size_t k = 0; k < all.n; k++) {
      glia_node *node = all.v[k];
      node->seq &= ~((uint64_t)1 << 63);
      glia_tensor_release(node->gout);
      node->gout = NULL;
      glia_node_release(node);
    }
    free(all.v);
    free(ready.v);
  }
  G->in_backward = false;
  glia_ctx_set_grad_mode(G, old);
  glia_tensor_release(g);
  return st;
}

/* ================================================ tensor grad flags */

glia_status glia_tensor_set_requires_grad(glia_ctx *G, glia_tensor *t, int on) {
  if (t->grad_fn && !on)
    return glia_fail(G, GLIA_EGRAD,
                     "glia.requires_grad: a non-leaf tensor always requires grad (use detach)");
  if (on && t->dtype != GLIA_DTYPE_F32)
    return glia_fail(G, GLIA_EDTYPE,
                     "glia.requires_grad: only f32 tensors can require grad, got %s",
                     glia_dtype_name(t->dtype));
  if (!t->grad_fn) t->requires_grad = on != 0;
  return GLIA_OK;
}

/* Backward adds into an assigned gradient in place, so it must be exactly
** what backward would have made: an f32 tensor of t's shape. One that backward
** could not safely add into -- a non-contiguous or expanded view (stride 0
** would add many gradients into one element, racing across threads), or bytes
** shared with t itself -- is stored as a contiguous copy instead; one with a
** history is stored detached, so that the gradient stays a leaf. */
glia_status glia_tensor_set_grad(glia_ctx *G, glia_tensor *t, glia_tensor *g) {
  static const char op[] = "glia.tensor.grad";
  glia_tensor *keep = NULL;
  if (g) {
    TRY(glia_check_live(G, op, t));
    TRY(glia_check_live(G, op, g));
    if (t->dtype != GLIA_DTYPE_F32)
      return glia_fail(G, GLIA_EDTYPE, "%s: only f32 tensors have a gradient, got a %s tensor %s",
                       op, glia_dtype_name(t->dtype), glia_shape_str(t));
    if (g->dtype != t->dtype || !glia_has_shape(g, t->ndim, t->size))
      return glia_fail(G, g->dtype != t->dtype ? GLIA_EDTYPE : GLIA_ESHAPE,
                       "%s: gradient %s %s does not match tensor %s %s", op,
                       glia_dtype_name(g->dtype), glia_shape_str(g), glia_dtype_name(t->dtype),
                       glia_shape_str(t));
    if (!glia_tensor_is_contiguous(g) || g->storage == t->storage)
      TRY(glia_tensor_clone(G, g, &keep));
    else if (glia_tensor_needs_grad(g))
      TRY(glia_tensor_detach(G, g, &keep));
    else
      keep = glia_tensor_retain(g);
  }
  glia_tensor_release(t->grad);
  t->grad = keep;
  return GLIA_OK;
}

int glia_tensor_requires_grad(const glia_tensor *t) { return glia_tensor_needs_grad(t); }
glia_tensor *glia_tensor_grad(glia_tensor *t) { return t->grad; }
void glia_tensor_zero_grad(glia_tensor *t) {
  glia_tensor_release(t->grad);
  t->grad = NULL;
}
