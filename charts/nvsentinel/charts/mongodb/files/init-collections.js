// Loaded by init-replicaset.js (after connect.js): nvsEnsureCollections(admin,
// spec) creates the collections and indexes NVSentinel's services expect, as
// NVSentinel's mongodb-store does. spec is the chart's NVS_COLLECTIONS JSON:
// {database, collections: [{name, indexes: [{key: [[field, direction], ...],
// name?, expireAfterSeconds?}]}]}. Idempotent: a collection or index that
// exists (an index is found by its key) is left alone; a TTL index whose
// expireAfterSeconds differs is changed in place with collMod, never dropped.
// Only raw commands (db.runCommand), so the logic runs against any server that
// speaks them.

function nvsIndexName(key) {
  return Object.entries(key)
    .map(([field, direction]) => `${field}_${direction}`)
    .join('_');
}

function nvsSameKey(existing, wanted) {
  const have = Object.entries(existing);
  const want = Object.entries(wanted);
  return (
    have.length === want.length &&
    have.every(([field, direction], i) => field === want[i][0] && Number(direction) === want[i][1])
  );
}

function nvsEnsureCollection(db, name) {
  const found = nvsRunCommand(db, { listCollections: 1, filter: { name }, nameOnly: true });
  if (found.cursor.firstBatch.length > 0) {
    print(`collection ${name} exists`);
    return;
  }
  try {
    nvsRunCommand(db, { create: name });
    print(`created collection ${name}`);
  } catch (error) {
    // NamespaceExists: created meanwhile (another run, or a service's first insert).
    if (error.code !== 48) {
      throw error;
    }
    print(`collection ${name} exists`);
  }
}

function nvsEnsureIndex(db, collection, existing, wanted) {
  const key = Object.fromEntries(wanted.key);
  const name = wanted.name || nvsIndexName(key);
  const ttl = wanted.expireAfterSeconds;
  if (ttl !== undefined && !(Number.isInteger(ttl) && ttl >= 0 && ttl <= 2147483647)) {
    throw new Error(`expireAfterSeconds of ${collection}.${name} must be an integer from 0 through 2147483647, got ${JSON.stringify(ttl)}`);
  }
  const same = existing.find((index) => nvsSameKey(index.key, key));
  if (same === undefined) {
    const clash = existing.find((index) => index.name === name);
    if (clash !== undefined) {
      throw new Error(
        `index ${collection}.${name} has key ${JSON.stringify(clash.key)}, expected ${JSON.stringify(key)}: drop it (db.${collection}.dropIndex('${name}')) and run the init Job again`,
      );
    }
    const index = { key, name };
    if (ttl !== undefined) {
      index.expireAfterSeconds = ttl;
    }
    nvsRunCommand(db, { createIndexes: collection, indexes: [index] });
    print(`created index ${collection}.${name}${ttl === undefined ? '' : ` (expireAfterSeconds ${ttl})`}`);
    return;
  }
  const alias = same.name === name ? '' : ` as ${same.name}`;
  if (ttl !== undefined && Number(same.expireAfterSeconds) !== ttl) {
    nvsRunCommand(db, { collMod: collection, index: { name: same.name, expireAfterSeconds: ttl } });
    const before = same.expireAfterSeconds === undefined ? 'none' : same.expireAfterSeconds;
    print(`changed expireAfterSeconds of ${collection}.${same.name} from ${before} to ${ttl}`);
    return;
  }
  print(`index ${collection}.${name} exists${alias}`);
}

function nvsEnsureCollections(admin, spec) {
  const db = admin.getSiblingDB(spec.database);
  for (const collection of spec.collections) {
    nvsEnsureCollection(db, collection.name);
    const existing = nvsRunCommand(db, { listIndexes: collection.name }).cursor.firstBatch;
    for (const index of collection.indexes) {
      nvsEnsureIndex(db, collection.name, existing, index);
    }
  }
}
