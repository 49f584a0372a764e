// Implementation of serve/engine.h: one iteration = choose chunks (decodes, partial prefills, admissions),
// lay their tokens out as rows, describe attention (one level, or two under cascade), run the backend,
// then advance every sequence by what was computed.
#include "serve/engine.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "common/error.h"
#include "serve/prefix_groups.h"

namespace cw::serve {

struct Engine::Group {
  int64_t id = 0;
  std::vector<int32_t> prefix;  // the shared tokens
  std::vector<int32_t> pages;
  int members_left = 0;
  enum State { Waiting, Prefilling, Ready } state = Waiting;
};

struct Engine::Seq {
  GenRequest req;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int32_t cached = 0;           // tokens whose K/V are in the cache
  std::vector<int32_t> own_pages;
  std::shared_ptr<Group> group;  // members of a sharing group (and the group's prefix pseudo-sequence)
  bool is_prefix = false;        // computes a group's shared prefix; samples nothing
  int64_t order = 0;             // admission order: later = lower priority (pre-empted first)
  GenResult result;

  int32_t shared() const { return group && !is_prefix ? int32_t(group->prefix.size()) : 0; }
  int32_t pending() const { return int32_t(tokens.size()) - cached; }
  bool decoding() const { return !is_prefix && !result.tokens.empty() && pending() == 1; }
  std::vector<int32_t> pages() const {
    if (!group) return own_pages;
    std::vector<int32_t> p = group->pages;
    if (!is_prefix) p.insert(p.end(), own_pages.begin(), own_pages.end());
    return p;
  }
};

struct Engine::Chunk {
  Seq* seq;
  int32_t begin, n;
  bool sample;
};

Engine::Engine(Backend& backend, EngineOptions opt) : backend_(backend), opt_(opt), pool_(backend.num_pages()) {
  check(opt.token_budget >= 1, "token budget must be at least 1");
  check(opt.max_running >= 1, "max running sequences must be at least 1");
  epoch_ = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Engine::~Engine() = default;

void Engine::set_token_budget(int budget) {
  check(budget >= 1, "token budget must be at least 1");
  opt_.token_budget = budget;
}

double Engine::now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count() - epoch_;
}

void Engine::admit_checks(const GenRequest& r) const {
  const ModelConfig& c = backend_.config();
  check(!r.prompt.empty(), "request ", r.id, ": the prompt is empty");
  check(int64_t(r.prompt.size()) < c.max_seq_len, "request ", r.id, ": the prompt has ", r.prompt.size(),
        " tokens; the model's context is ", c.max_seq_len);
  check(r.max_new_tokens >= 1, "request ", r.id, ": max_new_tokens must be at least 1");
  for (int32_t t : r.prompt) check(t >= 0 && t < c.vocab_size, "request ", r.id, ": token id ", t, " is outside the vocabulary");
  const int64_t pages = (int64_t(r.prompt.size()) + 1 + backend_.page_size() - 1) / backend_.page_size();
  check(pages <= pool_.capacity(), "request ", r.id, ": needs ", pages, " KV pages; the pool has ", pool_.capacity(),
        " (raise the KV memory or shorten the prompt)");
}

void Engine::submit(GenRequest r) {
  admit_checks(r);
  auto s = std::make_unique<Seq>();
  s->tokens = r.prompt;
  s->result.id = r.id;
  s->result.prompt_tokens = int32_t(r.prompt.size());
  s->result.submit_time = now();
  s->req = std::move(r);
  waiting_.push_back(std::move(s));
}

void Engine::submit_batch(std::vector<GenRequest> batch) {
  if (!opt_.prefix_sharing) {
    for (auto& r : batch) submit(std::move(r));
    return;
  }
  for (auto& r : batch) admit_checks(r);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> max_new;
  for (auto& r : batch) prompts.push_back(r.prompt), max_new.push_back(r.max_new_tokens);
  for (auto& g : group_by_prefix(prompts, max_new, backend_.page_size())) {
    std::shared_ptr<Group> group;
    if (g.shared_len > 0) {
      group = std::make_shared<Group>();
      group->id = ++groups_made_;
      group->prefix.assign(prompts[size_t(g.members[0])].begin(), prompts[size_t(g.members[0])].begin() + g.shared_len);
      group->members_left = int(g.members.size());
      shared_tokens_saved_ += int64_t(g.shared_len) * int64_t(g.members.size() - 1);
    }
    for (int m : g.members) {
      submit(std::move(batch[size_t(m)]));
      waiting_.back()->group = group;
    }
  }
}

Engine::Seq* Engine::preempt_one() {
  Seq* victim = nullptr;
  for (auto& s : running_)
    if (!s->is_prefix && (!victim || s->order > victim->order)) victim = s.get();
  if (!victim) return nullptr;
  pool_.release(victim->own_pages);
  victim->cached = victim->shared();
  ++victim->result.preemptions;
  auto it = std::find_if(running_.begin(), running_.end(), [&](auto& p) { return p.get() == victim; });
  waiting_.push_front(std::move(*it));
  running_.erase(it);
  return victim;
}

void Engine::finish(Seq& s, const std::string& reason) {
  s.result.finish_reason = reason;
  pool_.release(s.own_pages);
  if (s.group && --s.group->members_left == 0) pool_.release(s.group->pages);
  finished_.push_back(std::move(s.result));
}

StepStats Engine::step(const TokenCallback& on_token) {
  StepStats st;
  const int page = backend_.page_size();
  const int cap = std::min(opt_.token_budget, backend_.max_tokens());
  std::vector<Chunk> decodes, prefills;
  int budget = cap;
  auto pages_for = [&](int64_t tokens) { return int((tokens + page - 1) / page); };

  // Admits the head of the queue if its pages can be reserved; returns the running sequence or null.
  auto admit_front = [&]() -> Seq* {
    if (waiting_.empty() || int(running_.size()) >= opt_.max_running) return nullptr;
    Seq& s = *waiting_.front();
    if (s.group && s.group->state == Group::Waiting) {  // start the group: its prefix pseudo-sequence first
      std::vector<int32_t> pages;
      if (!pool_.allocate(pages_for(int64_t(s.group->prefix.size())), pages)) return nullptr;
      s.group->pages = std::move(pages);
      s.group->state = Group::Prefilling;
      auto p = std::make_unique<Seq>();
      p->tokens = s.group->prefix, p->group = s.group, p->is_prefix = true, p->order = admitted_++;
      running_.push_back(std::move(p));
      return running_.back().get();
    }
    if (s.group && s.group->state != Group::Ready) return nullptr;
    const int need = pages_for(int64_t(s.tokens.size())) - pages_for(s.shared());
    if (!pool_.allocate(need, s.own_pages)) return nullptr;
    s.cached = s.shared();
    s.order = admitted_++;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    return running_.back().get();
  };
  auto schedule_prefill = [&](Seq* s) {
    const int32_t n = std::min(s->pending(), budget);
    if (n <= 0) return false;
    prefills.push_back({s, s->cached, n, !s->is_prefix && n == s->pending()});
    budget -= n;
    return true;
  };

  if (!opt_.chunked_prefill) {  // prefill-first: whole prompts in iterations of their own (decodes wait)
    int room = backend_.max_tokens(), used = 0;
    auto take = [&](Seq* s) {
      const int32_t n = std::min(s->pending(), room);
      if (n <= 0) return;
      prefills.push_back({s, s->cached, n, !s->is_prefix && n == s->pending()});
      room -= n, used += n;
    };
    for (auto& s : running_)
      if (!s->decoding() && s->pending() > 0) take(s.get());
    while (room > 0 && !waiting_.empty() && (used == 0 || used + waiting_.front()->pending() <= cap)) {
      Seq* s = admit_front();
      if (!s) break;
      take(s);
    }
  }
  if (prefills.empty()) {
    // 1. Every running decode, one token each, in priority order; pre-empt when no page is free.
    std::vector<Seq*> order;
    for (auto& s : running_)
      if (s->decoding()) order.push_back(s.get());
    std::sort(order.begin(), order.end(), [](Seq* a, Seq* b) { return a->order < b->order; });
    // Victims are always the latest admitted, so once S or a later sequence was pre-empted, the rest of ORDER
    // (admitted later still) is gone too.
    int64_t cutoff = INT64_MAX;
    for (Seq* s : order) {
      if (budget == 0 || s->order >= cutoff) break;
      while (int64_t(s->pages().size()) * page < int64_t(s->cached) + 1 && !pool_.allocate(1, s->own_pages)) {
        Seq* victim = preempt_one();
        if (!victim) break;
        ++st.preemptions;
        cutoff = victim->order;
      }
      if (s->order >= cutoff) break;
      decodes.push_back({s, s->cached, 1, true});
      --budget;
    }
    if (opt_.chunked_prefill) {
      // 2. Partial prefills, oldest first.
      std::vector<Seq*> partial;
      for (auto& s : running_)
        if (!s->decoding() && s->pending() > 0) partial.push_back(s.get());
      std::sort(partial.begin(), partial.end(), [](Seq* a, Seq* b) { return a->order < b->order; });
      for (Seq* s : partial)
        if (budget > 0) schedule_prefill(s);
      // 3. Admissions, first come first served, while the budget lasts and pages can be reserved.
      while (budget > 0) {
        Seq* s = admit_front();
        if (!s) break;
        schedule_prefill(s);
      }
    }
  }
  std::vector<Chunk> chunks;
  std::stable_sort(decodes.begin(), decodes.end(), [](const Chunk& a, const Chunk& b) {  // group members adjacent
    return (a.seq->group ? a.seq->group->id : 0) < (b.seq->group ? b.seq->group->id : 0);
  });
  chunks.insert(chunks.end(), decodes.begin(), decodes.end());
  chunks.insert(chunks.end(), prefills.begin(), prefills.end());
  st.running = int(running_.size());
  st.waiting = int(waiting_.size());
  if (chunks.empty()) {
    if (!idle())
      fail("the KV page pool (", pool_.capacity(), " pages of ", page, " tokens) cannot hold the next request; ",
           "raise the KV memory or lower max_new_tokens / prompt length");
    return st;
  }
  for (auto& c : chunks) (c.seq->decoding() ? st.decode_rows : st.prefill_rows) += c.n;

  StepPlan plan = build_plan(chunks);
  const double t0 = now();
  std::vector<int32_t> sampled = backend_.forward(plan);
  const double t1 = now();
  st.seconds = t1 - t0;

  size_t next_sample = 0;
  std::vector<Seq*> done;
  for (auto& c : chunks) {
    Seq& s = *c.seq;
    s.cached += c.n;
    if (s.is_prefix && s.cached == int32_t(s.tokens.size())) {
      s.group->state = Group::Ready;
      done.push_back(&s);
      continue;
    }
    if (!c.sample) continue;
    const int32_t tok = sampled[next_sample++];
    if (tok == s.req.eos_id) {
      finish(s, "eos");
      done.push_back(&s);
      continue;
    }
    s.tokens.push_back(tok);
    s.result.tokens.push_back(tok);
    s.result.token_times.push_back(t1);
    if (on_token) on_token(s.req.id, tok);
    if (int32_t(s.result.tokens.size()) >= s.req.max_new_tokens) finish(s, "length"), done.push_back(&s);
    else if (int64_t(s.tokens.size()) >= backend_.config().max_seq_len) finish(s, "context"), done.push_back(&s);
  }
  running_.erase(std::remove_if(running_.begin(), running_.end(),
                                [&](auto& p) { return std::find(done.begin(), done.end(), p.get()) != done.end(); }),
                 running_.end());
  return st;
}

StepPlan Engine::build_plan(std::vector<Chunk>& chunks) const {
  StepPlan plan;
  const int page = backend_.page_size();
  auto first_pages = [&](const std::vector<int32_t>& pages, int64_t tokens) {
    return std::vector<int32_t>(pages.begin(), pages.begin() + (tokens + page - 1) / page);
  };
  bool cascade = false;
  for (auto& c : chunks) cascade |= opt_.cascade && c.seq->shared() > 0;
  std::vector<AttnItem> flat, prefix_level, suffix_level;
  for (auto& c : chunks) {
    Seq& s = *c.seq;
    const std::vector<int32_t> pages = s.pages();
    const int32_t r0 = plan.rows(), end = c.begin + c.n;
    for (int32_t p = c.begin; p < end; ++p) {
      plan.tokens.push_back(s.tokens[size_t(p)]);
      plan.positions.push_back(p);
      plan.slots.push_back(pages[size_t(p / page)] * page + p % page);
    }
    const int32_t r1 = plan.rows();
    if (c.sample) {
      plan.sample_rows.push_back(r1 - 1);
      kern::SampleParams sp = s.req.sampling;
      sp.counter = uint64_t(s.result.tokens.size());
      plan.sample_params.push_back(sp);
    }
    if (!cascade) {
      flat.push_back({r0, r1, first_pages(pages, end), end, 0});
      continue;
    }
    const int32_t shared = s.shared();
    if (shared > 0) {  // level 0: one item per run of the same group's rows reads the prefix once
      auto& last = prefix_level;
      if (!last.empty() && last.back().q_end == r0 && last.back().kv_len == shared && last.back().pages == s.group->pages)
        last.back().q_end = r1;
      else
        last.push_back({r0, r1, s.group->pages, shared, 0});
      suffix_level.push_back({r0, r1, first_pages(s.own_pages, end - shared), end - shared, shared});
    } else {
      if (!prefix_level.empty() && prefix_level.back().q_end == r0 && prefix_level.back().kv_len == 0)
        prefix_level.back().q_end = r1;
      else
        prefix_level.push_back({r0, r1, {}, 0, 0});
      suffix_level.push_back({r0, r1, first_pages(pages, end), end, 0});
    }
  }
  if (cascade) plan.levels = {std::move(prefix_level), std::move(suffix_level)};
  else plan.levels = {std::move(flat)};
  return plan;
}

std::vector<GenResult> Engine::run(const TokenCallback& on_token) {
  while (!idle()) step(on_token);
  return take_finished();
}

std::vector<GenResult> Engine::take_finished() {
  std::vector<GenResult> out;
  out.swap(finished_);
  return out;
}

}  // namespace cw::serve
