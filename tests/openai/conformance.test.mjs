// troupe serve against the official `openai` npm client: what a user of the
// OpenAI SDK does, over real HTTP. TROUPE_URL points at a running server
// started with --api-key $TROUPE_KEY (tests/openai/run.sh does that).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = `${process.env.TROUPE_URL}/v1`;
const key = process.env.TROUPE_KEY;
const client = new OpenAI({ baseURL, apiKey: key, maxRetries: 0, timeout: 60_000 });
const chat = [{ role: 'user', content: 'Tell me a fortune.' }];

test('models lists the served model', async () => {
  const models = await client.models.list();
  assert.ok(models.data.length >= 1);
  assert.equal(models.data[0].object, 'model');
});

test('chat completion, non-streaming, with usage', async () => {
  const r = await client.chat.completions.create({ model: 'demo', messages: chat, max_tokens: 24 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 0);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 24);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('chat completion, streaming, with a final usage chunk', async () => {
  const stream = await client.chat.completions.create({
    model: 'demo', messages: chat, max_tokens: 24, stream: true, stream_options: { include_usage: true },
  });
  let text = '', finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(chunks >= 2);
  assert.ok(['stop', 'length'].includes(finish));
  assert.ok(usage && usage.completion_tokens >= 1);
});

test('completions: max_tokens gives finish_reason length and exact usage', async () => {
  const r = await client.completions.create({
    model: 'demo', prompt: 'A day for', max_tokens: 12, temperature: 0, ignore_eos: true,
  });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 12);
});

test('completions: streaming text equals the non-streamed text (greedy)', async () => {
  const args = { model: 'demo', prompt: 'The cat', max_tokens: 16, temperature: 0, ignore_eos: true };
  const whole = await client.completions.create(args);
  let text = '';
  for await (const chunk of await client.completions.create({ ...args, stream: true })) {
    for (const c of chunk.choices) text += c.text;
  }
  assert.equal(text, whole.choices[0].text);
});

test('n > 1 returns n choices with indices 0..n-1', async () => {
  const r = await client.completions.create({ model: 'demo', prompt: 'A', max_tokens: 8, n: 3, seed: 1 });
  assert.equal(r.choices.length, 3);
  assert.deepEqual(r.choices.map((c) => c.index).sort(), [0, 1, 2]);
});

test('stop strings end the text before the stop string', async () => {
  const args = { model: 'demo', prompt: 'A day for', max_tokens: 40, temperature: 0, ignore_eos: true };
  const free = (await client.completions.create(args)).choices[0].text;
  const cut = free.indexOf(' ', 3);
  assert.ok(cut > 0, `no space to stop at in ${JSON.stringify(free)}`);
  const stop = free.slice(cut, cut + 2);
  const r = await client.completions.create({ ...args, stop: [stop] });
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.choices[0].text, free.slice(0, free.indexOf(stop)));
});

test('seed reproduces sampled text', async () => {
  const args = { model: 'demo', messages: chat, max_tokens: 20, temperature: 1.0, seed: 1234 };
  const a = await client.chat.completions.create(args);
  const b = await client.chat.completions.create(args);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
});

test('400, 401 and 404 map to the SDK error types', async () => {
  await assert.rejects(client.completions.create({ model: 'demo', prompt: 'x', max_tokens: -3 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'max_tokens');
  await assert.rejects(client.chat.completions.create({ model: 'demo', messages: chat, temperature: -1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'temperature');
  const wrong = new OpenAI({ baseURL, apiKey: 'not-the-key', maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
  await assert.rejects(client.completions.create({ model: 'no-such-model', prompt: 'x' }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
});
