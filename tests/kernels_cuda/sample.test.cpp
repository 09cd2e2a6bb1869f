// sample_cuda against the CPU sampler (model/sampler). The GPU draws with its
// own RNG (Philox, Gumbel-max), so sampled rows are checked by distribution:
// a test-local reference repeats the CPU sampler's filter steps (penalties,
// top-k with ties, top-p in (logit desc, id asc) order, min-p) and gives the
// kept set with its probabilities; the reference itself is checked against
// model/sampler draws. GPU samples must lie in the kept set, cover it where
// every kept token is likely enough to appear, and pass a chi-square test
// (fixed seeds, so the outcome is fixed). Greedy tokens, penalised logits and
// logprobs are compared exactly / within 1e-4. Outputs are poisoned first.
// With sample_paths.test.cpp the scenarios reach every path of the kernels:
// greedy (phase 1), plain draws (phase 2), gathered cuts with and without a
// summarised part above them (phase 3), and the exact radix fallback.
#include "sample_test_util.hpp"

TEST_CASE("sample_cuda greedy rows take the first argmax of the sanitised logits") {
  for (int64_t vocab : {int64_t{1000}, int64_t{32003}, int64_t{151936}}) {
    CAPTURE(vocab);
    const int64_t rows = 16;
    batch_in in;
    in.batch = rows;
    in.vocab = vocab;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> row = peaked_row(vocab, 10 + static_cast<uint64_t>(r), 3, r % 2 == 0);
      if (r == 1) row[7] = row[vocab - 3] = 50.0f;                   // tie: lowest id
      if (r == 2) row[5] = std::numeric_limits<float>::quiet_NaN(), row[vocab - 1] = 60.0f;
      if (r == 3) std::fill(row.begin(), row.end(), -kInf);         // no finite logit: token 0
      if (r == 4) row[vocab / 2] = kInf;
      if (r == 5) std::fill(row.begin(), row.end(), std::numeric_limits<float>::quiet_NaN());
      in.logits.insert(in.logits.end(), row.begin(), row.end());
      in.params.push_back(make(0.0f, 0, 1.0f, 0.0f));
    }
    const batch_out out = run_gpu(in, 1, true);
    for (int64_t r = 0; r < rows; ++r) {
      CAPTURE(r);
      const float* raw = in.logits.data() + r * vocab;
      sampler cpu(to_cpu(in.params[static_cast<size_t>(r)], 1), vocab, {});
      CHECK(out.tokens[0][static_cast<size_t>(r)] == cpu.sample(std::span<const float>(raw, static_cast<size_t>(vocab))));
      bool same = true;
      for (int64_t i = 0; i < vocab; ++i) {
        const float want = sanitize(raw[i]), got = out.processed[static_cast<size_t>(r * vocab + i)];
        same = same && std::memcmp(&want, &got, 4) == 0;
      }
      CHECK(same);
      CHECK(out.logprob[static_cast<size_t>(r)] == 0.0f);  // no logprobs asked: written as 0
      CHECK(out.top_ids[static_cast<size_t>(r) * sample_top_max] == -1);
      CHECK(out.params_after[static_cast<size_t>(r)].step == 1);
    }
  }
}

TEST_CASE("sample_cuda penalties give the CPU sampler's processed logits and greedy token") {
  const int64_t vocab = 151936, rows = 6;
  batch_in in;
  in.batch = rows;
  in.vocab = vocab;
  std::mt19937_64 rng(5);
  const float reps[] = {1.0f, 1.3f, 0.7f, 1.1f, 1.0f, 2.0f};
  const float freqs[] = {0.5f, 0.0f, -0.4f, 0.3f, 0.0f, 2.0f};
  const float pres[] = {0.0f, 0.0f, 0.6f, -1.0f, 1.5f, 0.1f};
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> row = peaked_row(vocab, 100 + static_cast<uint64_t>(r), 20, r == 3);
    std::vector<int32_t> prompt, output;
    for (int i = 0; i < 3000; ++i) prompt.push_back(static_cast<int32_t>(rng() % 200));  // heavy duplicates
    for (int i = 0; i < 500; ++i) output.push_back(static_cast<int32_t>(rng() % 300 + 100));
    {  // the top tokens themselves, so that the penalties move the argmax
      std::vector<int32_t> ids(static_cast<size_t>(vocab));
      std::iota(ids.begin(), ids.end(), 0);
      std::partial_sort(ids.begin(), ids.begin() + 8, ids.end(),
                        [&](int32_t x, int32_t y) { return row[static_cast<size_t>(x)] > row[static_cast<size_t>(y)]; });
      for (int i = 0; i < 8; ++i) {
        for (int c = 0; c <= i; ++c) output.push_back(ids[static_cast<size_t>(i)]);
        if (i % 2 == 0) prompt.push_back(ids[static_cast<size_t>(i)]);
      }
    }
    output.push_back(-5);
    output.push_back(static_cast<int32_t>(vocab) + 3);  // ignored
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q = make(0.0f, 0, 1.0f, 0.0f);
    q.repetition_penalty = reps[r];
    q.frequency_penalty = freqs[r];
    q.presence_penalty = pres[r];
    q.logprobs = r % 2 == 0 ? 5 : -1;
    in.params.push_back(q);
    in.prompt.push_back(prompt);
    in.output.push_back(output);
  }
  const batch_out out = run_gpu(in, 1, true);
  for (int64_t r = 0; r < rows; ++r) {
    CAPTURE(r);
    const auto& q = in.params[static_cast<size_t>(r)];
    const float* raw = in.logits.data() + r * vocab;
    const std::vector<float> want = penalised(raw, vocab, q, in.prompt[static_cast<size_t>(r)], in.output[static_cast<size_t>(r)]);
    const std::vector<float> got(out.processed.begin() + r * vocab, out.processed.begin() + (r + 1) * vocab);
    CHECK(std::memcmp(want.data(), got.data(), want.size() * 4) == 0);
    // The CPU sampler's own view: log-softmax of its processed row, and its greedy token.
    sampler cpu(to_cpu(q, 1), vocab, in.prompt[static_cast<size_t>(r)]);
    for (int32_t t : in.output[static_cast<size_t>(r)]) cpu.accept(t);
    std::vector<float> lsm_cpu(static_cast<size_t>(vocab)), lsm_gpu(static_cast<size_t>(vocab));
    cpu.processed_log_softmax(std::span<const float>(raw, static_cast<size_t>(vocab)), lsm_cpu);
    sampler::log_softmax(got, lsm_gpu);
    CHECK(std::memcmp(lsm_cpu.data(), lsm_gpu.data(), lsm_cpu.size() * 4) == 0);
    CHECK(out.tokens[0][static_cast<size_t>(r)] == cpu.sample(std::span<const float>(raw, static_cast<size_t>(vocab))));
  }
}

TEST_CASE("sample_cuda logprobs are the raw log-softmax: chosen and top-N within 1e-4, ids exact") {
  for (int64_t vocab : {int64_t{50}, int64_t{32003}, int64_t{151936}}) {
    CAPTURE(vocab);
    const int64_t rows = 12;
    batch_in in;
    in.batch = rows;
    in.vocab = vocab;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> row = peaked_row(vocab, 300 + static_cast<uint64_t>(r), 10, r % 3 == 0);
      if (r == 4) std::fill(row.begin() + 3, row.begin() + 30, 12.0f);  // ties in the top-N: lower id first
      if (r == 5) row[1] = std::numeric_limits<float>::quiet_NaN();
      in.logits.insert(in.logits.end(), row.begin(), row.end());
      sample_row_params q = r % 2 == 0 ? make(0.0f, 0, 1.0f, 0.0f) : make(0.9f, 40, 0.95f, 0.0f);
      q.logprobs = static_cast<int32_t>(r % 7 == 6 ? 0 : std::min<int64_t>(20, 1 + r * 2));
      if (r == 7) q.repetition_penalty = 1.5f, q.frequency_penalty = 0.5f;  // logprobs stay raw
      in.params.push_back(q);
      in.prompt.push_back({1, 2, 3});
      in.output.push_back({static_cast<int32_t>(vocab / 2), 4});
    }
    const batch_out out = run_gpu(in);
    double worst = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      CAPTURE(r);
      const float* raw = in.logits.data() + r * vocab;
      std::vector<float> lsm(static_cast<size_t>(vocab));
      sampler::log_softmax(std::span<const float>(raw, static_cast<size_t>(vocab)), lsm);
      const int32_t tok = out.tokens[0][static_cast<size_t>(r)];
      REQUIRE(tok >= 0);
      REQUIRE(tok < vocab);
      const double e = std::fabs(out.logprob[static_cast<size_t>(r)] - lsm[static_cast<size_t>(tok)]);
      worst = std::max(worst, e);
      CHECK(e <= 1e-4);
      const int n = std::min<int>(in.params[static_cast<size_t>(r)].logprobs, static_cast<int>(vocab));
      std::vector<int32_t> ids(static_cast<size_t>(vocab));
      std::iota(ids.begin(), ids.end(), 0);
      std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
        const float la = lsm[static_cast<size_t>(a)], lb = lsm[static_cast<size_t>(b)];
        return la > lb || (la == lb && a < b);
      });
      for (int i = 0; i < sample_top_max; ++i) {
        const size_t at = static_cast<size_t>(r) * sample_top_max + static_cast<size_t>(i);
        if (i < n) {
          CHECK(out.top_ids[at] == ids[static_cast<size_t>(i)]);
          const double te = std::fabs(out.top_lps[at] - lsm[static_cast<size_t>(ids[static_cast<size_t>(i)])]);
          worst = std::max(worst, te);
          CHECK(te <= 1e-4);
        } else {
          CHECK(out.top_ids[at] == -1);
          CHECK(out.top_lps[at] == -kInf);
        }
      }
    }
    MESSAGE("vocab " << vocab << ": worst logprob error " << worst);
  }
}

TEST_CASE("sample_cuda reference matches the CPU sampler's draws") {
  // The test's reference must describe model/sampler: its draws stay in the kept set and fit the probabilities.
  const std::vector<float> row = peaked_row(4000, 7, 25, true);
  for (const sample_row_params& q : {make(0.7f, 20, 1.0f, 0.0f), make(1.0f, 0, 0.9f, 0.0f), make(1.3f, 0, 1.0f, 0.05f),
                                     make(0.8f, 50, 0.8f, 0.02f)}) {
    const auto ref = reference(row, q);
    std::vector<int32_t> draws;
    for (int i = 0; i < 3000; ++i) {
      sampler cpu(to_cpu(q, 77 + static_cast<uint64_t>(i)), 4000, {});
      draws.push_back(cpu.sample(row));
    }
    check_distribution(draws, ref, "cpu sampler vs reference");
  }
}

TEST_CASE("sample_cuda sampled rows keep the CPU's token set and probabilities") {
  struct scenario {
    std::string name;
    std::vector<float> row;
    sample_row_params p;
  };
  std::vector<scenario> cases;
  const int64_t big = 151936;
  cases.push_back({"temperature only, vocab 1000", peaked_row(1000, 1, 5, false), make(1.0f, 0, 1.0f, 0.0f)});
  cases.push_back({"top-k with ties", peaked_row(big, 2, 30, true), make(0.7f, 20, 1.0f, 0.0f)});
  cases.push_back({"top-p", peaked_row(big, 3, 30, false), make(1.0f, 0, 0.9f, 0.0f)});
  cases.push_back({"min-p", peaked_row(big, 4, 30, false), make(1.3f, 0, 1.0f, 0.05f)});
  cases.push_back({"top-k + top-p + min-p", peaked_row(32003, 5, 60, true), make(0.8f, 50, 0.8f, 0.02f)});
  // k = 300: the blocks' own pushes (>= 300 each) overflow the list, so phase 3 gathers the row's cut.
  cases.push_back({"top-k 300 (phase 3)", peaked_row(big, 13, 30, false), make(1.0f, 300, 1.0f, 0.0f)});
  cases.push_back({"top-k 300 + top-p (phase 3)", peaked_row(big, 14, 30, false), make(0.9f, 300, 0.8f, 0.0f)});
  {  // 3000 near-equal top logits: the bucket holds > 2048 candidates, so the exact radix search runs.
    std::vector<float> row = peaked_row(big, 6, 0, false);
    for (int i = 0; i < 3000; ++i) row[static_cast<size_t>(i) * 37] = 12.0f + static_cast<float>(i % 997) * 1e-5f;
    cases.push_back({"radix top-k", row, make(1.0f, 10, 1.0f, 0.0f)});
    cases.push_back({"radix top-p", row, make(1.0f, 0, 0.002f, 0.0f)});
    cases.push_back({"radix top-k + top-p", row, make(1.0f, 2500, 0.0025f, 0.0f)});
  }
  {  // exact ties at the top: the top-p cut falls inside the ties, by id
    std::vector<float> row = peaked_row(big, 8, 0, false);
    for (int i = 0; i < 3000; ++i) row[static_cast<size_t>(i) * 41 + 5] = 12.0f;
    cases.push_back({"radix top-p inside ties", row, make(1.0f, 0, 0.0018f, 0.0f)});
    std::vector<float> small(row.begin(), row.begin() + 60000);  // ~1460 ties: fast path
    cases.push_back({"top-p inside ties", small, make(1.0f, 0, 0.004f, 0.0f)});
    cases.push_back({"top-k keeps all ties", small, make(1.0f, 7, 1.0f, 0.0f)});
  }
  {  // a flat distribution: a top-p nucleus of tens of thousands of tokens
    std::vector<float> row = peaked_row(big, 9, 0, false);
    for (float& x : row) x *= 0.1f;
    cases.push_back({"flat top-p", row, make(1.0f, 0, 0.5f, 0.0f)});
    cases.push_back({"large top-k", row, make(1.0f, 5000, 1.0f, 0.0f)});
  }
  {  // penalties, then top-p
    scenario s{"penalties + top-p", peaked_row(big, 10, 30, false), make(0.9f, 0, 0.9f, 0.0f)};
    s.p.repetition_penalty = 1.4f;
    s.p.frequency_penalty = 0.3f;
    cases.push_back(s);
  }
  for (const scenario& sc : cases) {
    CAPTURE(sc.name);
    const int64_t rows = 64;
    const int launches = 100;
    batch_in in = replicate(sc.row, rows, sc.p);
    std::vector<int32_t> prompt, output;
    const bool pen = sc.p.repetition_penalty != 1.0f || sc.p.frequency_penalty != 0.0f;
    if (pen) {
      std::vector<size_t> ids(sc.row.size());
      std::iota(ids.begin(), ids.end(), 0);
      std::partial_sort(ids.begin(), ids.begin() + 10, ids.end(), [&](size_t a, size_t b) { return sc.row[a] > sc.row[b]; });
      for (int i = 0; i < 10; i += 2) prompt.push_back(static_cast<int32_t>(ids[static_cast<size_t>(i)]));
      for (int i = 0; i < 10; i += 3) output.push_back(static_cast<int32_t>(ids[static_cast<size_t>(i)]));
      in.prompt.assign(static_cast<size_t>(rows), prompt);
      in.output.assign(static_cast<size_t>(rows), output);
    }
    const batch_out out = run_gpu(in, launches);
    const auto ref = reference(penalised(sc.row.data(), in.vocab, sc.p, prompt, output), sc.p);
    MESSAGE(sc.name << ": kept " << ref.size() << " tokens");
    check_distribution(flatten(out.tokens), ref, sc.name);
    for (const auto& p : out.params_after) CHECK(p.step == static_cast<uint64_t>(launches));
  }
}

TEST_CASE("sample_cuda draws are reproducible per (seed, step) and independent of the batch") {
  const int64_t vocab = 151936;
  const std::vector<float> row = peaked_row(vocab, 11, 200, false);
  batch_in a = replicate(row, 32, make(1.0f, 0, 0.95f, 0.0f));
  const batch_out r1 = run_gpu(a, 4), r2 = run_gpu(a, 4);
  CHECK(r1.tokens == r2.tokens);
  // Row 0 alone, and after other rows, gives the same tokens as in the batch.
  batch_in one = replicate(row, 1, make(1.0f, 0, 0.95f, 0.0f));
  const batch_out r3 = run_gpu(one, 4);
  for (int l = 0; l < 4; ++l) CHECK(r3.tokens[static_cast<size_t>(l)][0] == r1.tokens[static_cast<size_t>(l)][0]);
  // Different seeds (rows) and different steps (launches) differ.
  std::set<int32_t> per_row(r1.tokens[0].begin(), r1.tokens[0].end());
  CHECK(per_row.size() > 8);
  int changed = 0;
  for (size_t i = 0; i < r1.tokens[0].size(); ++i) changed += r1.tokens[0][i] != r1.tokens[1][i];
  CHECK(changed > 8);
}

TEST_CASE("sample_cuda mixed batch: greedy and sampled rows, every output written, graph replay") {
  const int64_t vocab = 128256, rows = 24;
  batch_in in;
  in.batch = rows;
  in.vocab = vocab;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> row = peaked_row(vocab, 500 + static_cast<uint64_t>(r), 30, r % 4 == 1);
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q;
    switch (r % 6) {
      case 0: q = make(0.0f, 0, 1.0f, 0.0f); break;
      case 1: q = make(0.6f, 30, 1.0f, 0.0f); break;
      case 2: q = make(1.0f, 0, 0.85f, 0.0f); break;
      case 3: q = make(1.2f, 0, 1.0f, 0.1f); break;
      case 4: q = make(0.0f, 5, 0.5f, 0.0f); break;  // greedy ignores the filters
      default: q = make(0.9f, 100, 0.9f, 0.05f); break;
    }
    q.seed = 42 + static_cast<uint64_t>(r);
    q.logprobs = static_cast<int32_t>(r % 3 == 0 ? 3 : -1);
    in.params.push_back(q);
  }
  const batch_out out = run_gpu(in, 3);
  for (int64_t r = 0; r < rows; ++r) {
    CAPTURE(r);
    const auto& q = in.params[static_cast<size_t>(r)];
    const std::vector<float> row(in.logits.begin() + r * vocab, in.logits.begin() + (r + 1) * vocab);
    const auto ref = reference(row, q);
    for (int l = 0; l < 3; ++l) CHECK(ref.count(out.tokens[static_cast<size_t>(l)][static_cast<size_t>(r)]) == 1);
    if (q.temperature == 0.0f) {
      sampler cpu(to_cpu(q, 1), vocab, {});
      CHECK(out.tokens[0][static_cast<size_t>(r)] == cpu.sample(row));
    }
    const float lp = out.logprob[static_cast<size_t>(r)];
    CHECK(!std::isnan(lp));
    CHECK(lp <= 0.0f);
    for (int i = 0; i < sample_top_max; ++i) {
      const int32_t id = out.top_ids[static_cast<size_t>(r) * sample_top_max + static_cast<size_t>(i)];
      CHECK((id == -1 || (id >= 0 && id < vocab)));
      CHECK((i < (q.logprobs > 0 ? q.logprobs : 0)) == (id != -1));
    }
  }

  // Captured in a CUDA graph with advance_step, replays give the same tokens as plain launches.
  device_buffer logits = upload(in.logits), params = upload(in.params), tokens(static_cast<size_t>(rows) * 4);
  const size_t ws_bytes = sample_workspace_bytes(rows, vocab);
  device_buffer ws(ws_bytes);
  ws.fill(0);
  sample_outputs o;
  o.tokens = tokens.as<int32_t>();
  cudaStream_t s;
  REQUIRE(cudaStreamCreate(&s) == cudaSuccess);
  cudaGraph_t graph;
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal) == cudaSuccess);
  sample_cuda(logits.as<float>(), rows, vocab, params.as<sample_row_params>(), {}, o, ws.data(), ws_bytes, true, s);
  REQUIRE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
  cudaGraphExec_t exec;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int l = 0; l < 3; ++l) {
    REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
    cuda_sync(s);
    CHECK(download<int32_t>(tokens, static_cast<size_t>(rows)) == out.tokens[static_cast<size_t>(l)]);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

TEST_CASE("sample_cuda rejects bad arguments, each for its own reason") {
  const size_t ws_bytes = sample_workspace_bytes(4, 1000);
  device_buffer buf(ws_bytes), ws(ws_bytes);
  ws.fill(0);
  sample_outputs o;
  o.tokens = buf.as<int32_t>();
  auto* p = buf.as<sample_row_params>();
  const float* l = buf.as<float>();
  auto message = [&](auto&& call) -> std::string {
    try {
      call();
    } catch (const troupe::error& e) {
      return e.what();
    }
    return "no error";
  };
  CHECK(message([&] { sample_cuda(l, 1, 0, p, {}, o, ws.data(), ws_bytes, false, nullptr); }).find("vocab") != std::string::npos);
  CHECK(message([&] { sample_cuda(l, 1, sample_vocab_max + 1, p, {}, o, ws.data(), ws_bytes, false, nullptr); })
            .find("vocab") != std::string::npos);
  CHECK(message([&] { sample_cuda(l, sample_batch_max + 1, 8, p, {}, o, ws.data(), ws_bytes, false, nullptr); })
            .find("batch") != std::string::npos);
  CHECK(message([&] { sample_cuda(nullptr, 1, 8, p, {}, o, ws.data(), ws_bytes, false, nullptr); }).find("logits") !=
        std::string::npos);
  CHECK(message([&] { sample_cuda(l, 1, 8, nullptr, {}, o, ws.data(), ws_bytes, false, nullptr); }).find("params") !=
        std::string::npos);
  CHECK(message([&] { sample_cuda(l, 1, 8, p, {}, sample_outputs{}, ws.data(), ws_bytes, false, nullptr); })
            .find("tokens") != std::string::npos);
  CHECK(message([&] { sample_cuda(l, 4, 1000, p, {}, o, ws.data(), ws_bytes - 1, false, nullptr); }).find("workspace") !=
        std::string::npos);
  CHECK(message([&] { sample_cuda(l, 1, 8, p, {}, o, ws.data(), ws_bytes, false, nullptr, 4); }).find("phases") !=
        std::string::npos);
  sample_history h;
  h.offsets = buf.as<int32_t>();
  CHECK(message([&] { sample_cuda(l, 1, 8, p, h, o, ws.data(), ws_bytes, false, nullptr); }).find("history") !=
        std::string::npos);
  CHECK_NOTHROW(sample_cuda(l, 0, 8, p, {}, o, nullptr, 0, false, nullptr));
}
