#include "eval/evalset.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/fileio.hpp"
#include "core/profile.hpp"
#include "core/rng.hpp"
#include "data/dataset.hpp"
#include "data/entities.hpp"
#include "data/shard.hpp"
#include "eval/decode.hpp"
#include "eval/metrics.hpp"

namespace moelab {

using json = nlohmann::json;

std::vector<bool> entity_select(const std::vector<int64_t>& a, const std::vector<int64_t>& b,
                                double top_a, double bottom_b) {
  std::vector<size_t> seen;
  for (size_t i = 0; i < a.size(); i++)
    if (a[i] > 0) seen.push_back(i);
  const size_t n = seen.size();
  const size_t keep_a = size_t(std::ceil(double(n) * top_a / 100.0));
  const size_t keep_b = size_t(std::ceil(double(n) * bottom_b / 100.0));
  std::vector<size_t> by_a = seen, by_b = seen;
  std::stable_sort(by_a.begin(), by_a.end(), [&](size_t x, size_t y) { return a[x] > a[y]; });
  std::stable_sort(by_b.begin(), by_b.end(), [&](size_t x, size_t y) { return b[x] < b[y]; });
  std::vector<bool> in_a(a.size(), false), out(a.size(), false);
  for (size_t i = 0; i < keep_a && i < n; i++) in_a[by_a[i]] = true;
  for (size_t i = 0; i < keep_b && i < n; i++) out[by_b[i]] = in_a[by_b[i]];
  return out;
}

namespace {

// Reads a subset's training ranges as one stream (documents separated by EOT).
std::vector<int32_t> read_stream(const DataDir& d, const std::string& subset) {
  std::vector<int32_t> out;
  for (const TokenRange& r : d.ranges(subset, "train")) {
    const Shard s(r.shard, d.fingerprint);
    const size_t at = out.size();
    out.resize(at + (r.end - r.begin));
    s.copy(out.data() + at, r.begin, r.end - r.begin);
  }
  return out;
}

}  // namespace

void entities_build(const EntityBuildOptions& o) {
  if (o.prompt < 1 || o.target < 1 || o.max_samples < 1 || o.max_per_entity < 1)
    fail("entities build: --prompt, --target, --max-samples and --max-per-entity must be positive");
  if (!(o.top_a > 0 && o.top_a <= 100 && o.bottom_b > 0 && o.bottom_b <= 100))
    fail("entities build: --top and --bottom are percentages in (0, 100]");
  const DataDir d = data_open(o.data_dir);
  const std::vector<Entity> ents = entities_load(o.entities);
  TokenMatcher m;
  for (size_t i = 0; i < ents.size(); i++)
    for (const auto& v : entity_variants(*d.tokenizer, ents[i].name)) m.add(v, int32_t(i));
  m.build();

  const std::vector<int32_t> A = read_stream(d, o.subset_a), Bs = read_stream(d, o.subset_b);
  std::vector<int64_t> ca(ents.size(), 0), cb(ents.size(), 0);
  std::vector<std::pair<int64_t, int32_t>> occ;  // (end, entity) in A
  // Every occurrence counts, nested ones too ("New York" inside "New York City"), but not one
  // that a longer word continues ("Ammon" in "Ammonites").
  const std::vector<bool> cont = tokens_continuing_word(*d.tokenizer);
  auto count = [&](const std::vector<int32_t>& s, std::vector<int64_t>& c, bool keep) {
    m.scan(s, [&](int64_t end, int32_t v) {
      if (end < int64_t(s.size()) && s[size_t(end)] >= 0 && s[size_t(end)] < int32_t(cont.size()) &&
          cont[size_t(s[size_t(end)])])
        return;
      c[size_t(v)]++;
      if (keep) occ.emplace_back(end, v);
    });
  };
  count(A, ca, true);
  count(Bs, cb, false);
  const std::vector<bool> C = entity_select(ca, cb, o.top_a, o.bottom_b);
  const int64_t n_c = std::count(C.begin(), C.end(), true);
  if (n_c == 0)
    fail(
        fmt::format("entities build: the entity set C is empty ({} of {} entities occur in {}; "
                    "none is both frequent there and rare in {})",
                    std::count_if(ca.begin(), ca.end(), [](int64_t x) { return x > 0; }),
                    ents.size(), o.subset_a, o.subset_b));

  // Candidate windows: the whole window inside one document of A.
  struct Cand {
    int64_t start, end;
    int32_t entity;
    uint64_t key;
  };
  std::vector<Cand> cands;
  std::vector<int64_t> eot_before(A.size() + 1, 0);  // number of EOTs in A[0, i)
  for (size_t i = 0; i < A.size(); i++) eot_before[i + 1] = eot_before[i] + (A[i] == d.eot);
  for (const auto& [end, v] : occ) {
    if (!C[size_t(v)]) continue;
    // The match's start: the variant whose tokens end at `end`.
    int64_t start = -1;
    for (const auto& var : entity_variants(*d.tokenizer, ents[size_t(v)].name))
      if (int64_t(var.size()) <= end &&
          std::equal(var.begin(), var.end(), A.begin() + (end - int64_t(var.size()))))
        start = std::max(start, end - int64_t(var.size()));
    const int64_t lo = std::min(start - o.prompt, end - o.prompt), hi = end + o.target;
    if (start < 0 || lo < 0 || hi > int64_t(A.size())) continue;
    if (eot_before[size_t(hi)] - eot_before[size_t(lo)] > 0) continue;
    cands.push_back({start, end, v, rng_u64(o.seed, uint64_t(v), uint64_t(start))});
  }
  // Deterministic caps: per entity the max_per_entity lowest keys, then the max_samples lowest.
  std::sort(cands.begin(), cands.end(), [](const Cand& x, const Cand& y) { return x.key < y.key; });
  std::vector<int64_t> taken(ents.size(), 0);
  EvalSet set;
  set.fingerprint = d.fingerprint;
  std::map<int32_t, int32_t> local;  // entity -> index in set.names
  std::map<std::string, int64_t> per_type;
  for (const Cand& c : cands) {
    if (int64_t(set.samples.size()) >= o.max_samples) break;
    if (taken[size_t(c.entity)] >= o.max_per_entity) continue;
    taken[size_t(c.entity)]++;
    auto [it, fresh] = local.emplace(c.entity, int32_t(set.names.size()));
    if (fresh) {
      set.names.push_back(ents[size_t(c.entity)].name);
      set.types.push_back(ents[size_t(c.entity)].type);
    }
    EvalSample s;
    s.entity = it->second;
    std::string surface =
        d.tokenizer->decode(std::span(A).subspan(size_t(c.start), size_t(c.end - c.start)));
    const size_t b = surface.find_first_not_of(' '), e = surface.find_last_not_of(' ');
    s.surface = b == std::string::npos ? surface : surface.substr(b, e - b + 1);
    s.in_prompt.assign(A.begin() + (c.end - o.prompt), A.begin() + c.end);
    s.ex_prompt.assign(A.begin() + (c.start - o.prompt), A.begin() + c.start);
    s.target.assign(A.begin() + c.end, A.begin() + (c.end + o.target));
    set.samples.push_back(std::move(s));
    per_type[ents[size_t(c.entity)].type]++;
  }

  set.subset = o.subset_a;
  evalset_write(o.out, set);
  const json summary = {
      {"entities", ents.size()},
      {"in_a", std::count_if(ca.begin(), ca.end(), [](int64_t x) { return x > 0; })},
      {"in_b", std::count_if(cb.begin(), cb.end(), [](int64_t x) { return x > 0; })},
      {"occurrences_a", occ.size()},
      {"set_c", n_c},
      {"candidate_windows", cands.size()},
      {"samples", set.samples.size()},
      {"sample_entities", set.names.size()},
      {"per_type", per_type}};
  file_write_atomic(o.out + ".summary.json", summary.dump(2) + "\n");
  fmt::print("{}\n", summary.dump());
}

void evalset_write(const std::string& path, const EvalSet& set) {
  check(set.names.size() == set.types.size(), "evalset_write: names and types differ in length");
  for (const EvalSample& s : set.samples)
    check(s.entity >= 0 && size_t(s.entity) < set.names.size(),
          "evalset_write: a sample's entity index is out of range");
  const int64_t prompt = set.samples.empty() ? 0 : int64_t(set.samples[0].in_prompt.size());
  const int64_t target = set.samples.empty() ? 0 : int64_t(set.samples[0].target.size());
  std::string text = json{{"format", "moelab-evalset"},
                          {"version", 1},
                          {"fingerprint", fmt::format("{:016x}", set.fingerprint)},
                          {"prompt", prompt},
                          {"target", target},
                          {"subset", set.subset}}
                         .dump() +
                     "\n";
  for (const EvalSample& s : set.samples)
    text += json{{"entity", set.names[size_t(s.entity)]},
                 {"type", set.types[size_t(s.entity)]},
                 {"surface", s.surface},
                 {"in_prompt", s.in_prompt},
                 {"ex_prompt", s.ex_prompt},
                 {"target", s.target}}
                .dump() +
            "\n";
  file_write_atomic(path, text);
}

EvalSet evalset_filter(const EvalSet& set, const std::vector<bool>& keep) {
  check(keep.size() == set.samples.size(), "evalset_filter: one flag per sample");
  EvalSet out;
  out.fingerprint = set.fingerprint;
  out.subset = set.subset;
  out.names = set.names;
  out.types = set.types;
  for (size_t i = 0; i < set.samples.size(); i++)
    if (keep[i]) out.samples.push_back(set.samples[i]);
  return out;
}

// ----------------------------------------------------------------------------
// loading: every field of every line is validated before anything uses the set

namespace {

// A line of an evaluation set, for messages ("PATH:LINE: ...").
struct Where {
  const std::string& path;
  int64_t line;
};

[[noreturn]] void refuse(const Where& w, std::string_view what) {
  fail(fmt::format("{}:{}: {}", w.path, w.line, what));
}

// A non-negative integer field of the header.
int64_t header_count(const json& head, const char* key, const Where& w) {
  const auto it = head.find(key);
  if (it == head.end()) refuse(w, fmt::format("'{}' is missing", key));
  // is_number_integer covers unsigned too; one above INT64_MAX is refused, not wrapped
  if (!it->is_number_integer() || (it->is_number_unsigned() && it->get<uint64_t>() > INT64_MAX) ||
      it->get<int64_t>() < 0)
    refuse(w, fmt::format("'{}' must be a non-negative integer", key));
  return it->get<int64_t>();
}

const std::string& string_field(const json& j, const char* key, const Where& w) {
  const auto it = j.find(key);
  if (it == j.end()) refuse(w, fmt::format("'{}' is missing", key));
  if (!it->is_string()) refuse(w, fmt::format("'{}' must be a string", key));
  return it->get_ref<const std::string&>();
}

struct Header {
  uint64_t fingerprint = 0;
  std::string subset;
  int64_t prompt = 0, target = 0;
};

Header header_parse(const std::string& line, const Where& w, const EvalSetLimits& lim) {
  const json head = json::parse(line, nullptr, false);
  if (head.is_discarded() || !head.is_object() || !head.contains("format") ||
      head["format"] != "moelab-evalset")
    refuse(w, "not a moelab evaluation set (the first line must be its JSON header)");
  if (const auto v = head.find("version"); v == head.end() || *v != 1)
    refuse(w, "'version' must be 1");
  Header h;
  const std::string& fp = string_field(head, "fingerprint", w);
  const auto [end, ec] = std::from_chars(fp.data(), fp.data() + fp.size(), h.fingerprint, 16);
  if (fp.empty() || fp.size() > 16 || ec != std::errc() || end != fp.data() + fp.size())
    refuse(w, "'fingerprint' must be 1 to 16 hex digits");
  h.subset = string_field(head, "subset", w);
  h.prompt = header_count(head, "prompt", w);
  h.target = header_count(head, "target", w);
  if (lim.max_positions > 0 && h.prompt + h.target > lim.max_positions)
    refuse(w, fmt::format("'prompt' + 'target' = {} exceeds the model's {} positions",
                          h.prompt + h.target, lim.max_positions));
  return h;
}

// A list of exactly `len` token ids, each below both vocabularies.
std::vector<int32_t> token_list(const json& j, const char* key, int64_t len,
                                const EvalSetLimits& lim, const Where& w) {
  const auto it = j.find(key);
  if (it == j.end()) refuse(w, fmt::format("'{}' is missing", key));
  if (!it->is_array()) refuse(w, fmt::format("'{}' must be a list of token ids", key));
  if (int64_t(it->size()) != len)
    refuse(w, fmt::format("'{}' has {} tokens, the header says {}", key, it->size(), len));
  std::vector<int32_t> out;
  out.reserve(it->size());
  for (size_t i = 0; i < it->size(); i++) {
    const json& e = (*it)[i];
    if (!e.is_number_integer())
      refuse(w, fmt::format("'{}'[{}] is not an integer token id", key, i));
    if (!e.is_number_unsigned() && e.get<int64_t>() < 0)
      refuse(w, fmt::format("'{}'[{}] = {} is a negative token id", key, i, e.get<int64_t>()));
    const uint64_t id = e.get<uint64_t>();
    if (lim.tokenizer_vocab > 0 && id >= uint64_t(lim.tokenizer_vocab))
      refuse(w, fmt::format("'{}'[{}] = {} is not below the tokenizer's vocabulary ({})", key, i,
                            id, lim.tokenizer_vocab));
    if (lim.model_vocab > 0 && id >= uint64_t(lim.model_vocab))
      refuse(w, fmt::format("'{}'[{}] = {} is not below the model's vocab_size ({})", key, i, id,
                            lim.model_vocab));
    if (id > uint64_t(INT32_MAX))
      refuse(w, fmt::format("'{}'[{}] = {} is not a token id", key, i, id));
    out.push_back(int32_t(id));
  }
  return out;
}

// One sample line: the sample (its entity index set by the caller), the entity and its type.
struct SampleLine {
  EvalSample sample;
  std::string entity, type;
};

SampleLine sample_parse(const std::string& line, const Header& h, const EvalSetLimits& lim,
                        const Where& w) {
  const json j = json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) refuse(w, "not a JSON object");
  SampleLine out;
  out.entity = string_field(j, "entity", w);
  if (out.entity.find_first_not_of(" \t") == std::string::npos) refuse(w, "'entity' is blank");
  out.type = j.contains("type") ? string_field(j, "type", w) : "MISC";
  if (out.type != "PER" && out.type != "LOC" && out.type != "ORG" && out.type != "MISC")
    refuse(w, "'type' must be PER, LOC, ORG or MISC");
  EvalSample& s = out.sample;
  s.surface = j.contains("surface") ? string_field(j, "surface", w) : out.entity;
  if (s.surface.find_first_not_of(" \t\r\n") == std::string::npos)
    refuse(w, "'surface' is blank (M_ex would find nothing)");
  s.in_prompt = token_list(j, "in_prompt", h.prompt, lim, w);
  s.ex_prompt = token_list(j, "ex_prompt", h.prompt, lim, w);
  s.target = token_list(j, "target", h.target, lim, w);
  return out;
}

}  // namespace

EvalSet evalset_load(const std::string& path, uint64_t expected, const EvalSetLimits& lim) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path + ": is a folder, not an evaluation set");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  std::string line;
  if (!std::getline(f, line)) fail(path + ": empty evaluation set");
  const Header h = header_parse(line, {path, 1}, lim);
  EvalSet set;
  set.fingerprint = h.fingerprint;
  set.subset = h.subset;
  if (set.fingerprint != expected)
    fail(fmt::format("{}: made with another tokenizer (fingerprint {:016x}, this one {:016x})",
                     path, set.fingerprint, expected));
  std::map<std::string, int32_t> ids;
  for (int64_t n = 2; std::getline(f, line); n++) {
    const Where w{path, n};
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // a blank line
    // an empty set (a frozen set may be) is written with lengths 0; samples need both positive
    if (h.prompt < 1 || h.target < 1)
      refuse({path, 1}, "'prompt' and 'target' must be positive in a set with samples");
    SampleLine p = sample_parse(line, h, lim, w);
    auto [it, fresh] = ids.emplace(p.entity, int32_t(set.names.size()));
    if (fresh) {
      set.names.push_back(p.entity);
      set.types.push_back(p.type);
    } else if (set.types[size_t(it->second)] != p.type) {
      refuse(w, fmt::format("'type' {} differs from the {} given to this entity before", p.type,
                            set.types[size_t(it->second)]));
    }
    p.sample.entity = it->second;
    set.samples.push_back(std::move(p.sample));
  }
  if (f.bad()) fail(path + ": read error");
  return set;
}

// ----------------------------------------------------------------------------
// evaluation

nlohmann::ordered_json evalreport_json(const EvalReport& r) {
  auto one = [](const EvalMetrics& m) {
    return nlohmann::ordered_json{{"samples", m.samples},
                                  {"m_in", m.m_in},
                                  {"m_ex", m.m_ex},
                                  {"m_f", m.m_f},
                                  {"ppl_ent", m.ppl_ent}};
  };
  nlohmann::ordered_json j = one(r.all);
  for (const auto& [type, m] : r.per_type) j["per_type"][type] = one(m);
  return j;
}

nlohmann::ordered_json evalreport_undefined_json() {
  return {{"samples", 0},   {"m_in", nullptr},    {"m_ex", nullptr},
          {"m_f", nullptr}, {"ppl_ent", nullptr}, {"per_type", nlohmann::ordered_json::object()}};
}

namespace {

// A set built in code bypasses the loader: its shapes and ids are checked here, before any
// buffer is sized or indexed from them (a failed check is an error, never a stray write).
void evalset_check(const EvalSet& set, int64_t P, int64_t T, int64_t V) {
  check(P >= 1 && T >= 1, "evaluate: empty prompt or target");
  check(set.names.size() == set.types.size(), "evaluate: names and types differ in length");
  auto ids_ok = [V](const std::vector<int32_t>& ids) {
    return std::all_of(ids.begin(), ids.end(), [V](int32_t t) { return t >= 0 && t < V; });
  };
  for (const EvalSample& s : set.samples) {
    check(s.entity >= 0 && size_t(s.entity) < set.names.size(),
          "evaluate: a sample's entity index is out of range");
    check(int64_t(s.in_prompt.size()) == P && int64_t(s.ex_prompt.size()) == P &&
              int64_t(s.target.size()) == T,
          "evaluate: samples differ in prompt or target length");
    check(ids_ok(s.in_prompt) && ids_ok(s.ex_prompt) && ids_ok(s.target),
          "evaluate: a token id outside the model's vocabulary");
  }
}

}  // namespace

EvalReport evaluate(const Model<float>& model, const Tokenizer& tok, const EvalSet& set,
                    int64_t batch) {
  const int64_t n = int64_t(set.samples.size());
  if (n == 0) fail("evaluate: the evaluation set has no samples");
  if (batch < 1) fail(fmt::format("evaluate: the batch must be positive (not {})", batch));
  const int64_t P = int64_t(set.samples[0].in_prompt.size()),
                T = int64_t(set.samples[0].target.size());
  const int64_t V = model.cfg.vocab_size;
  evalset_check(set, P, T, V);
  // Greedy choices only among the ids the tokenizer can decode: a padded vocabulary's extra
  // ids are never targets and would make the M_ex text undecodable.
  const int64_t Vd = std::min(V, tok.vocab_size());
  check(Vd >= 1, "evaluate: the tokenizer has no ids");
  const int64_t B = std::min(batch, n);
  // One decoder batch of 2B rows: rows b < B hold M_in prompt + true continuation (teacher
  // forcing for M(f) and PPL_ent, and the first greedy token of M_in), rows B + b the M_ex prompt
  // padded to the same length. Greedy steps then overwrite the cache from position P on, and a
  // step only reads positions up to its own, so the padding and the true tokens are never seen.
  Decoder dec(model, 2 * B, P + T);
  const Ops<float>& op = dec.device().ops<float>();
  const int64_t n_seq = P + T - 1;
  std::vector<double> in_hit(static_cast<size_t>(n)), top1(static_cast<size_t>(n)),
      nll(static_cast<size_t>(n));
  EvalReport rep;
  rep.ex_hit.assign(size_t(n), false);
  std::vector<int64_t> from(size_t(2 * B), P - 1), to(size_t(2 * B), P);
  std::fill_n(to.begin(), B, P + T - 1);
  std::vector<int32_t> seq(size_t(2 * B * n_seq)), next(size_t(2 * B)), gen(size_t(2 * B * T));
  std::vector<double> hits(static_cast<size_t>(B)), loss(static_cast<size_t>(B));
  for (int64_t s0 = 0; s0 < n; s0 += B) {
    // the last batch is padded with repeats of its last sample
    auto sample = [&](int64_t b) -> const EvalSample& {
      return set.samples[size_t(std::min(n - 1, s0 + b))];
    };
    for (int64_t b = 0; b < B; b++) {
      const EvalSample& s = sample(b);
      auto in = seq.begin() + b * n_seq, ex = seq.begin() + (B + b) * n_seq;
      std::copy_n(s.in_prompt.begin(), P, in);
      std::copy_n(s.target.begin(), T - 1, in + P);
      std::copy_n(s.ex_prompt.begin(), P, ex);
      std::fill_n(ex + P, T - 1, s.ex_prompt[size_t(P - 1)]);
    }
    dec.prefill_each(seq, n_seq, from, to, [&](int64_t r, std::span<const float> logits) {
      next[size_t(r)] = logits_argmax(logits.data(), Vd);  // first greedy token
      if (r >= B) return;
      hits[size_t(r)] = 0, loss[size_t(r)] = 0;
      std::vector<int32_t> top(static_cast<size_t>(T));  // [T] greedy among the decodable ids
      std::vector<float> mx(static_cast<size_t>(T));     // [T] PPL: over all of V
      std::vector<double> sum(static_cast<size_t>(T));   // [T] >= 1 (the top term), summed in float
      op.argmax(top.data(), logits.data(), T, Vd, V);
      op.logsumexp(mx.data(), sum.data(), logits.data(), T, V, false);
      for (int64_t t = 0; t < T; t++) {
        const float* z = logits.data() + t * V;
        const int32_t y = sample(r).target[size_t(t)];
        loss[size_t(r)] += std::log(sum[size_t(t)]) + double(mx[size_t(t)]) - double(z[y]);
        hits[size_t(r)] += top[size_t(t)] == y;
      }
    });
    for (int64_t i = 0; i < T; i++) {
      for (int64_t r = 0; r < 2 * B; r++) gen[size_t(r * T + i)] = next[size_t(r)];
      if (i + 1 == T) break;
      const auto logits = dec.step(next, P + i);
      ProfileScope prof(dec.device().profile, "step argmax");
      op.argmax(next.data(), logits.data(), 2 * B, Vd, V);
    }
    const std::span<const int32_t> gen_in(gen.data(), size_t(B * T)),
        gen_ex(gen.data() + B * T, size_t(B * T));
    for (int64_t b = 0; b < B && s0 + b < n; b++) {
      const EvalSample& s = sample(b);
      in_hit[size_t(s0 + b)] =
          metric_m_in(std::span(gen_in).subspan(size_t(b * T), size_t(T)), s.target, 1, T);
      rep.ex_hit[size_t(s0 + b)] = metric_m_ex_hit(
          tok.decode(std::span(gen_ex).subspan(size_t(b * T), size_t(T))), s.surface);
      top1[size_t(s0 + b)] = hits[size_t(b)] / double(T);
      nll[size_t(s0 + b)] = loss[size_t(b)] / double(T);
    }
  }
  auto summarise = [&](const std::string& type) {
    EvalMetrics m;
    double nll_sum = 0;
    for (int64_t i = 0; i < n; i++) {
      if (!type.empty() && set.types[size_t(set.samples[size_t(i)].entity)] != type) continue;
      m.samples++;
      m.m_in += in_hit[size_t(i)];
      m.m_ex += rep.ex_hit[size_t(i)] ? 1 : 0;
      m.m_f += top1[size_t(i)];
      nll_sum += nll[size_t(i)];
    }
    if (m.samples) {
      m.m_in /= double(m.samples), m.m_ex /= double(m.samples), m.m_f /= double(m.samples);
      m.ppl_ent = std::exp(nll_sum / double(m.samples));
    }
    return m;
  };
  rep.all = summarise("");
  for (const char* type : {"PER", "LOC", "ORG", "MISC"})
    if (const EvalMetrics m = summarise(type); m.samples) rep.per_type.emplace_back(type, m);
  return rep;
}

}  // namespace moelab
