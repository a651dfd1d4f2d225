/**
 * The client against the real server: `todo-api serve` on a free port (SQLite in a temporary directory), driven
 * only through `createTodoClient`. TODO_API_BIN overrides where the server's command is (default: the project's
 * .venv).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";

import { createTodoClient, isProblem, type TaskWrite, type TodoClient } from "../src/index.js";

const PROJECT = resolve(import.meta.dirname, "..", "..", "..");
const BIN = process.env.TODO_API_BIN ?? join(PROJECT, ".venv", "bin", "todo-api");

let server: ChildProcess | undefined;
let baseUrl = "";
let workdir = "";

async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => (typeof address === "object" && address ? done(address.port) : fail(new Error("no port"))));
    });
  });
}

before(async () => {
  workdir = mkdtempSync(join(tmpdir(), "todo-client-"));
  const env = {
    ...process.env,
    DATABASE_URL: `sqlite:///${join(workdir, "todo.db")}`,
    BETTER_AUTH_SECRET: "client-test-secret-that-is-long-enough-0123456789",
    BCRYPT_ROUNDS: "4",
    LOGIN_RATE_LIMIT: "0",
    LOGIN_IP_RATE_LIMIT: "0",
    SIGNUP_RATE_LIMIT: "0",
  };
  const migrated = spawnSync(BIN, ["migrate"], { env, cwd: workdir, encoding: "utf8" });
  assert.equal(migrated.status, 0, migrated.stderr);
  const port = await freePort();
  baseUrl = `http://127.0.0.1:${port}`;
  server = spawn(BIN, ["serve", "--port", String(port), "--no-access-log"], { env, cwd: workdir, stdio: "ignore" });
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(`${baseUrl}/health`)).ok) break;
    } catch {
      // not up yet
    }
    assert.ok(Date.now() < deadline, "todo-api serve did not answer /health within 30 s");
    await new Promise((wait) => setTimeout(wait, 100));
  }
});

after(() => {
  server?.kill("SIGTERM");
  rmSync(workdir, { recursive: true, force: true });
});

async function signUp(): Promise<{ client: TodoClient; userId: string }> {
  const name = `client_${Math.random().toString(36).slice(2, 10)}`;
  const anonymous = createTodoClient({ baseUrl });
  const { data, error, response } = await anonymous.POST("/api/auth/signup", {
    body: { username: name, email: `${name}@example.com`, password: "correct horse battery", confirm_password: "correct horse battery" },
  });
  assert.equal(response.status, 201, JSON.stringify(error));
  assert.ok(data);
  let calls = 0;
  // The token as a function (what Better Auth's authClient.token() feeds), asked before every request.
  const client = createTodoClient({
    baseUrl,
    token: async () => {
      calls += 1;
      return data.access_token;
    },
  });
  const me = await client.GET("/api/auth/me");
  assert.equal(me.data?.id, data.user.id);
  assert.ok(calls >= 1);
  return { client, userId: data.user.id };
}

test("a task's whole life through the typed client", async () => {
  const { client, userId } = await signUp();
  const path = { user_id: userId };

  // A title-only create type-checks: every other field of TaskWrite is optional.
  const minimal: TaskWrite = { title: "Buy milk" };
  const created = await client.POST("/api/{user_id}/tasks", { params: { path }, body: minimal });
  assert.equal(created.response.status, 201);
  assert.ok(created.data);
  assert.equal(created.data.title, "Buy milk");
  assert.equal(created.data.completed, false);
  const taskId = created.data.id;
  const firstTag = created.response.headers.get("etag");
  assert.ok(firstTag);

  await client.POST("/api/{user_id}/tasks", { params: { path }, body: { title: "Walk the dog", description: "park" } });
  await client.POST("/api/{user_id}/tasks", { params: { path }, body: { title: "Done already", completed: true } });

  const open = await client.GET("/api/{user_id}/tasks", {
    params: { path, query: { completed: "false", sort_by: "title", sort_order: "asc" } },
  });
  assert.equal(open.response.status, 200);
  assert.deepEqual(open.data?.items.map((task) => task.title), ["Buy milk", "Walk the dog"]);
  assert.equal(open.data?.total, 2);

  const found = await client.GET("/api/{user_id}/tasks", { params: { path, query: { q: "DOG" } } });
  assert.deepEqual(found.data?.items.map((task) => task.title), ["Walk the dog"]);

  const updated = await client.PATCH("/api/{user_id}/tasks/{task_id}", {
    params: { path: { ...path, task_id: taskId }, header: { "If-Match": firstTag } },
    body: { title: "Buy oat milk" },
  });
  assert.equal(updated.response.status, 200);
  assert.equal(updated.data?.title, "Buy oat milk");
  assert.notEqual(updated.response.headers.get("etag"), firstTag);

  // The stale ETag: a typed 412 problem carrying the current ETag, and nothing changed.
  const stale = await client.PUT("/api/{user_id}/tasks/{task_id}", {
    params: { path: { ...path, task_id: taskId }, header: { "If-Match": firstTag } },
    body: { title: "lost update" },
  });
  assert.equal(stale.response.status, 412);
  assert.equal(stale.data, undefined);
  assert.ok(isProblem(stale.error, "precondition-failed"));
  assert.equal(stale.error.status, 412);
  assert.equal(stale.response.headers.get("content-type"), "application/problem+json");
  assert.equal(stale.response.headers.get("etag"), updated.response.headers.get("etag"));

  const completed = await client.PATCH("/api/{user_id}/tasks/{task_id}/complete", {
    params: { path: { ...path, task_id: taskId } },
  });
  assert.equal(completed.data?.completed, true);

  const deleted = await client.DELETE("/api/{user_id}/tasks/{task_id}", { params: { path: { ...path, task_id: taskId } } });
  assert.equal(deleted.response.status, 200);
  assert.equal(deleted.data?.title, "Buy oat milk");
  const gone = await client.GET("/api/{user_id}/tasks/{task_id}", { params: { path: { ...path, task_id: taskId } } });
  assert.equal(gone.response.status, 404);
  assert.ok(isProblem(gone.error, "not-found"));
});

test("tags, a tag filter, a cursor walk and clearing completed tasks", async () => {
  const { client, userId } = await signUp();
  const path = { user_id: userId };
  for (let index = 0; index < 5; index += 1) {
    const body: TaskWrite = { title: `chore ${index}`, tags: index % 2 ? ["Home", "weekly"] : ["home"], priority: "high" };
    const made = await client.POST("/api/{user_id}/tasks", { params: { path }, body });
    assert.equal(made.response.status, 201);
    assert.deepEqual(made.data?.tags, index % 2 ? ["home", "weekly"] : ["home"]);
  }
  await client.POST("/api/{user_id}/tasks", {
    params: { path },
    body: { title: "due soon", due_at: "2026-12-24T18:00:00+01:00", completed: true },
  });

  const weekly = await client.GET("/api/{user_id}/tasks", { params: { path, query: { tag: ["weekly"] } } });
  assert.equal(weekly.data?.total, 2);

  const tags = await client.GET("/api/{user_id}/tags", { params: { path } });
  assert.deepEqual(tags.data?.items, [
    { name: "home", count: 5 },
    { name: "weekly", count: 2 },
  ]);

  // Walk the high-priority tasks two at a time, by cursor.
  const titles: string[] = [];
  let cursor: string | null | undefined;
  do {
    const page = await client.GET("/api/{user_id}/tasks", {
      params: { path, query: { priority: "high", sort_by: "title", sort_order: "asc", page_size: 2, ...(cursor ? { cursor } : {}) } },
    });
    assert.equal(page.response.status, 200);
    assert.ok(page.data);
    titles.push(...page.data.items.map((task) => task.title));
    cursor = page.data.next_cursor;
    assert.equal(Boolean(page.response.headers.get("link")), Boolean(cursor));
  } while (cursor);
  assert.deepEqual(titles, ["chore 0", "chore 1", "chore 2", "chore 3", "chore 4"]);

  const cleared = await client.DELETE("/api/{user_id}/tasks", { params: { path, query: { completed: "true" } } });
  assert.deepEqual(cleared.data, { deleted: 1 });
});

test("another user's path is a typed 403 problem, and no token a 401", async () => {
  const { client } = await signUp();
  const other = await signUp();
  const forbidden = await client.GET("/api/{user_id}/tasks", { params: { path: { user_id: other.userId } } });
  assert.equal(forbidden.response.status, 403);
  assert.ok(isProblem(forbidden.error, "forbidden"));
  const anonymous = createTodoClient({ baseUrl });
  const unauthorized = await anonymous.GET("/api/auth/me");
  assert.equal(unauthorized.response.status, 401);
  assert.ok(isProblem(unauthorized.error, "unauthorized"));
});
