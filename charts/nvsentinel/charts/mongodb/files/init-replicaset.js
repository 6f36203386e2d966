// Run by the init Job (mongosh --nodb --file). Idempotent: initiates the
// single-member replica set when it has no configuration yet, waits for it to
// become primary, creates NVSentinel's collections and indexes
// (init-collections.js), then creates or updates the X.509 users in $external.
// Environment: connect.js's, plus NVS_SCRIPTS_DIR, NVS_REPLICA_SET,
// NVS_MEMBER_HOST (host:port clients reach the member at), NVS_COLLECTIONS
// (JSON, see init-collections.js) and NVS_X509_USERS (JSON list of
// {subject, roles}).
load(`${process.env.NVS_SCRIPTS_DIR}/connect.js`);
load(`${process.env.NVS_SCRIPTS_DIR}/init-collections.js`);

const replicaSet = nvsEnv('NVS_REPLICA_SET');
const member = nvsEnv('NVS_MEMBER_HOST');
const collections = JSON.parse(nvsEnv('NVS_COLLECTIONS'));
const users = JSON.parse(nvsEnv('NVS_X509_USERS'));

const admin = nvsConnect(120);

function replicaSetConfig() {
  try {
    return nvsCommand(admin, { replSetGetConfig: 1 }).config;
  } catch (error) {
    if (error.codeName === 'NotYetInitialized' || error.code === 94) {
      return null;
    }
    throw error;
  }
}

const existing = replicaSetConfig();
if (existing === null) {
  print(`initiating replica set ${replicaSet} with member ${member}`);
  nvsCommand(admin, { replSetInitiate: { _id: replicaSet, members: [{ _id: 0, host: member }] } });
} else if (existing._id !== replicaSet) {
  throw new Error(`mongod belongs to replica set ${existing._id}, expected ${replicaSet}`);
} else {
  const hosts = existing.members.map((m) => m.host).join(', ');
  print(`replica set ${replicaSet} already initiated (members: ${hosts})`);
  if (!existing.members.some((m) => m.host === member)) {
    print(`warning: ${member} is not a member; clients may fail to discover the primary`);
  }
}

for (let attempt = 1; ; attempt++) {
  if (nvsCommand(admin, { hello: 1 }).isWritablePrimary) {
    print('member is primary');
    break;
  }
  if (attempt >= 90) {
    throw new Error('member did not become primary within 3 minutes');
  }
  sleep(2000);
}

nvsEnsureCollections(admin, collections);

const external = admin.getSiblingDB('$external');
for (const user of users) {
  if (external.getUser(user.subject) === null) {
    external.createUser({ user: user.subject, roles: user.roles });
    print(`created X.509 user ${user.subject}`);
  } else {
    external.updateUser(user.subject, { roles: user.roles });
    print(`updated roles of X.509 user ${user.subject}`);
  }
}
print('init complete');
