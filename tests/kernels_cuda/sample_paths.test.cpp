// sample_cuda's paths and contracts (the CPU-twin comparisons are in
// sample.test.cpp): the exact radix fallback, tokens independent of the batch
// and of a reused workspace, phases run only as asked, the count cuts gathered
// in phase 3, and the host-side wrappers (sample_context, request_sampler).
#include "sample_test_util.hpp"

TEST_CASE("sample_cuda radix paths, small (for the sanitizers)") {
  // > 2048 tokens tied at the max: the top-k, top-p and top-N searches all take the radix path.
  const int64_t vocab = 9000;
  std::vector<float> row = peaked_row(vocab, 12, 0, false);
  for (int i = 0; i < 3000; ++i) row[static_cast<size_t>(i) * 3] = 9.0f;
  batch_in in;
  in.batch = 4;
  in.vocab = vocab;
  const sample_row_params ps[] = {make(1.0f, 5, 1.0f, 0.0f), make(1.0f, 0, 0.001f, 0.0f), make(1.0f, 2500, 0.5f, 0.0f),
                                  make(0.0f, 0, 1.0f, 0.0f)};
  for (int r = 0; r < 4; ++r) {
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q = ps[r];
    q.seed = 9 + static_cast<uint64_t>(r);
    q.logprobs = 20;
    in.params.push_back(q);
  }
  const batch_out out = run_gpu(in, 2);
  for (int r = 0; r < 4; ++r) {
    CAPTURE(r);
    const auto ref = reference(row, in.params[static_cast<size_t>(r)]);
    for (int l = 0; l < 2; ++l) CHECK(ref.count(out.tokens[static_cast<size_t>(l)][static_cast<size_t>(r)]) == 1);
    for (int i = 0; i < sample_top_max; ++i)  // the 20 lowest ids among the tied maxima
      CHECK(out.top_ids[static_cast<size_t>(r) * sample_top_max + static_cast<size_t>(i)] == 3 * i);
  }
}

TEST_CASE("sample_cuda tokens do not depend on the batch (block split) or on a reused workspace") {
  // Batch 256 spreads each row's tiles over fewer, larger blocks than batch 1;
  // the plans cover phase 2 draws, gathered cuts with a summarised part above
  // them (bulk top-p, large top-k) and without, min-p, penalties and logprobs.
  const int64_t vocab = 128256;
  const std::vector<float> row = peaked_row(vocab, 21, 40, false);  // the bench's shape: half the mass in the bulk
  std::vector<int32_t> prompt, output;
  for (int i = 0; i < 40; ++i) prompt.push_back(static_cast<int32_t>((i * 7919) % vocab));
  for (int i = 0; i < 12; ++i) output.push_back(static_cast<int32_t>((i * 104729) % vocab));
  std::vector<sample_row_params> plans = {make(1.0f, 0, 1.0f, 0.0f),   make(1.0f, 0, 0.9f, 0.0f),
                                          make(0.8f, 50, 0.95f, 0.0f), make(1.0f, 3000, 1.0f, 0.0f),
                                          make(1.5f, 0, 1.0f, 0.02f),  make(0.7f, 0, 0.5f, 0.01f),
                                          make(0.0f, 0, 1.0f, 0.0f)};
  sample_row_params pen = make(1.0f, 0, 0.9f, 0.0f);
  pen.repetition_penalty = 1.2f;
  pen.frequency_penalty = 0.5f;
  plans.push_back(pen);
  workspace shared(sample_workspace_bytes(256, vocab));
  for (size_t pi = 0; pi < plans.size(); ++pi) {
    CAPTURE(pi);
    sample_row_params q = plans[pi];
    q.logprobs = pi % 2 == 0 ? 5 : -1;
    batch_in one = replicate(row, 1, q), big = replicate(row, 256, q);
    one.prompt = {prompt};
    one.output = {output};
    big.prompt.assign(256, prompt);
    big.output.assign(256, output);
    const batch_out a = run_gpu(one, 3), b = run_gpu(big, 3, false, &shared), c = run_gpu(one, 3, false, &shared);
    for (int l = 0; l < 3; ++l) {
      CHECK(a.tokens[static_cast<size_t>(l)][0] == b.tokens[static_cast<size_t>(l)][0]);
      CHECK(a.tokens[static_cast<size_t>(l)][0] == c.tokens[static_cast<size_t>(l)][0]);
    }
    CHECK(a.logprob[0] == doctest::Approx(b.logprob[0]).epsilon(1e-5));
    for (int i = 0; i < sample_top_max; ++i) CHECK(a.top_ids[static_cast<size_t>(i)] == b.top_ids[static_cast<size_t>(i)]);
    // Every row of the big batch is valid for its reference, and rows (seeds) differ.
    const auto ref = reference(penalised(row.data(), vocab, q, prompt, output), q);
    std::set<int32_t> distinct;
    for (int64_t r = 0; r < 256; ++r) {
      const int32_t t = b.tokens[0][static_cast<size_t>(r)];
      CHECK(ref.count(t) == 1);
      distinct.insert(t);
    }
    MESSAGE("plan " << pi << ": kept " << ref.size() << " tokens, " << distinct.size() << " distinct in 256 rows");
    if (ref.size() > 100) CHECK(distinct.size() > 20);
  }
}

TEST_CASE("sample_cuda runs only the phases asked: greedy rows finish in phase 1") {
  const int64_t vocab = 32003, rows = 8;
  batch_in in;
  in.batch = rows;
  in.vocab = vocab;
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> row = peaked_row(vocab, 900 + static_cast<uint64_t>(r), 10, false);
    in.logits.insert(in.logits.end(), row.begin(), row.end());
    sample_row_params q = make(0.0f, 0, 1.0f, 0.0f);
    q.logprobs = r % 2 == 0 ? 0 : -1;  // the chosen token's logprob needs no top-N
    in.params.push_back(q);
    CHECK(sample_row_phases(q) == 1);
  }
  const batch_out one = run_gpu(in, 1, false, nullptr, 1), all = run_gpu(in, 1);
  CHECK(one.tokens == all.tokens);
  CHECK(one.logprob == all.logprob);
  CHECK(sample_row_phases(make(1.0f, 0, 1.0f, 0.1f)) == 2);
  CHECK(sample_row_phases(make(1.0f, 40, 1.0f, 0.0f)) == 3);
  sample_row_params lp = make(0.0f, 0, 1.0f, 0.0f);
  lp.logprobs = 3;
  CHECK(sample_row_phases(lp) == 3);
  // A sampled row in a phase-1 launch gets no token (the poison stays).
  in.params[1] = make(1.0f, 0, 1.0f, 0.0f);
  const batch_out partial = run_gpu(in, 1, false, nullptr, 1);
  CHECK(partial.tokens[0][0] == all.tokens[0][0]);
  CHECK(partial.tokens[0][1] == 0x7f7f7f7f);
}

TEST_CASE("sample_context: one upload, tokens and logprobs back, same tokens as sample_cuda") {
  const int64_t vocab = 151936, rows = 6;
  std::vector<float> logits;
  std::vector<sample_row_params> params;
  std::vector<std::vector<sample_token_stat>> hist(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> row = peaked_row(vocab, 700 + static_cast<uint64_t>(r), 25, false);
    logits.insert(logits.end(), row.begin(), row.end());
    sample_row_params q = r % 3 == 0 ? make(0.0f, 0, 1.0f, 0.0f) : make(0.9f, r % 3 == 1 ? 40 : 0, 0.92f, 0.0f);
    q.seed = 5 + static_cast<uint64_t>(r);
    q.step = 17;
    q.logprobs = static_cast<int32_t>(r % 2 == 0 ? 4 : -1);
    if (r >= 3) {
      q.repetition_penalty = 1.3f;
      q.presence_penalty = 0.4f;
      hist[static_cast<size_t>(r)] = history_of(q, {1, 2, 3, 900, 900}, {7, 7, 8, static_cast<int32_t>(vocab - 1)}, vocab);
    }
    params.push_back(q);
  }
  device_buffer dl = upload(logits);
  std::vector<sample_row_host> host;
  for (int64_t r = 0; r < rows; ++r)
    host.push_back({params[static_cast<size_t>(r)], hist[static_cast<size_t>(r)].data(), hist[static_cast<size_t>(r)].size()});
  sample_context ctx;
  for (int round = 0; round < 2; ++round) {  // the second round reuses every buffer
    ctx.enqueue(dl.as<float>(), vocab, host.data(), host.size(), nullptr);
    cuda_sync(nullptr);
    batch_in in;
    in.batch = rows;
    in.vocab = vocab;
    in.logits = logits;
    in.params = params;
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int32_t> gen;
      for (const auto& e : hist[static_cast<size_t>(r)])
        for (int c = 0; c < e.generated; ++c) gen.push_back(e.token);
      std::vector<int32_t> pr;
      for (const auto& e : hist[static_cast<size_t>(r)])
        if (e.in_prompt) pr.push_back(e.token);
      in.prompt.push_back(pr);
      in.output.push_back(gen);
    }
    const batch_out want = run_gpu(in, 1);
    for (int64_t r = 0; r < rows; ++r) {
      CAPTURE(r);
      const sample_row_result got = ctx.result(static_cast<size_t>(r));
      CHECK(got.token == want.tokens[0][static_cast<size_t>(r)]);
      const int n = std::max(params[static_cast<size_t>(r)].logprobs, 0);
      CHECK(got.n_top == n);
      if (params[static_cast<size_t>(r)].logprobs >= 0) CHECK(got.logprob == want.logprob[static_cast<size_t>(r)]);
      for (int i = 0; i < n; ++i) CHECK(got.top_ids[i] == want.top_ids[static_cast<size_t>(r) * sample_top_max + static_cast<size_t>(i)]);
    }
  }
  CHECK_THROWS_AS(ctx.result(static_cast<size_t>(rows)), troupe::error);
  // Histories must be sorted and in range: checked on the host with a message.
  std::vector<sample_token_stat> bad = {{5, 1, 0}, {3, 1, 0}};
  sample_row_host b = host[3];
  b.history = bad.data();
  b.history_size = bad.size();
  CHECK_THROWS_AS(ctx.enqueue(dl.as<float>(), vocab, &b, 1, nullptr), troupe::error);
}

TEST_CASE("request_sampler: history for the device, seed resolved, step = tokens generated") {
  sampling_params p;
  p.repetition_penalty = 1.1f;
  p.frequency_penalty = 0.2f;
  const std::vector<int32_t> prompt = {9, 3, 3, 70000, -1, 5};
  request_sampler s(p, 1000, prompt);
  REQUIRE(s.params().seed.has_value());
  for (int32_t t : {5, 5, 11, 2000, 3}) s.accept(t);
  const auto h = s.history();
  const std::vector<std::array<int32_t, 3>> want = {{3, 1, 1}, {5, 2, 1}, {9, 0, 1}, {11, 1, 0}};
  REQUIRE(h.size() == want.size());
  for (size_t i = 0; i < h.size(); ++i) {
    CHECK(h[i].token == want[i][0]);
    CHECK(h[i].generated == want[i][1]);
    CHECK(h[i].in_prompt == want[i][2]);
  }
  CHECK(s.generated_count() == 4);  // 2000 is out of range
  const sample_row_params d = s.device_params(2);
  CHECK(d.step == 4);
  CHECK(d.seed == *s.params().seed);
  CHECK(d.logprobs == 2);
  sampling_params plain;
  request_sampler q(plain, 1000, prompt);
  q.accept(4);
  CHECK(q.history().empty());  // no penalty: nothing to send
}

TEST_CASE("sample_cuda count cuts whose block pushes overflow are gathered in phase 3") {
  // Tile 0 holds the 20 best logits; every other tile holds 200 ties far
  // below. Each of those blocks pushes its 200 ties for a cut of 20, which
  // overflows the row's list: top-k 20 and the top-20 logprobs are then
  // gathered from the row's own cut in phase 3.
  const int64_t vocab = 151936;
  std::mt19937_64 rng(31);
  std::normal_distribution<float> d(-10.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(vocab));
  for (float& x : row) x = d(rng);
  for (int i = 0; i < 20; ++i) row[static_cast<size_t>(100 + 37 * i)] = 20.0f + 0.01f * static_cast<float>(i % 7);
  for (int64_t t = 1; t * 4096 < vocab; ++t)
    for (int i = 0; i < 200; ++i) {
      const int64_t at = t * 4096 + 3 + 17 * i;
      if (at < vocab) row[static_cast<size_t>(at)] = 5.0f;
    }
  sample_row_params q = make(1.0f, 20, 1.0f, 0.0f);
  q.logprobs = 20;
  batch_in in = replicate(row, 2, q);
  const batch_out out = run_gpu(in, 50);
  const auto ref = reference(row, q);
  REQUIRE(ref.size() == 20);
  std::vector<int32_t> draws = flatten(out.tokens);
  check_distribution(draws, ref, "top-k 20 from phase 3");
  std::vector<float> lsm(static_cast<size_t>(vocab));
  sampler::log_softmax(row, lsm);
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + 20, ids.end(), [&](int32_t a, int32_t b) {
    const float la = lsm[static_cast<size_t>(a)], lb = lsm[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  });
  for (int i = 0; i < 20; ++i) {
    CHECK(out.top_ids[static_cast<size_t>(i)] == ids[static_cast<size_t>(i)]);
    CHECK(std::fabs(out.top_lps[static_cast<size_t>(i)] - lsm[static_cast<size_t>(ids[static_cast<size_t>(i)])]) <= 1e-4);
  }
}
