// Run by compose's `mongo-init` job (mongosh, connected to mongo-1 as root): makes the replica set rs0 of the three
// members, waits for a primary, then creates (or updates the password of) the application's user, which may read
// and write the application's database and nothing else. Idempotent: a second run changes nothing but the password.
const REPLICA_SET = "rs0";
const MEMBERS = ["mongo-1:27017", "mongo-2:27017", "mongo-3:27017"];
const PRIMARY_WITHIN_MS = 120000;

const appDb = process.env.MONGODB_DB || "sms_gateway";
const appUser = process.env.SMS_MONGO_USER || "sms";
const appPassword = process.env.SMS_MONGO_PASSWORD;
const rootUser = process.env.MONGO_ROOT_USERNAME || "root";
const rootPassword = process.env.MONGO_ROOT_PASSWORD;
if (!appPassword || !rootPassword) {
  print("mongo-init: SMS_MONGO_PASSWORD and MONGO_ROOT_PASSWORD must be set");
  quit(1);
}

function initiated() {
  try {
    rs.status();
    return true;
  } catch (e) {
    if (e.codeName === "NotYetInitialized") return false;
    throw e;
  }
}

if (initiated()) {
  print(`mongo-init: replica set ${REPLICA_SET} already initiated`);
} else {
  // mongo-1 is preferred as primary (priority 2), so elections after a restart settle where the init ran.
  rs.initiate({
    _id: REPLICA_SET,
    members: MEMBERS.map((host, i) => ({ _id: i, host, priority: i === 0 ? 2 : 1 })),
  });
  print(`mongo-init: replica set ${REPLICA_SET} initiated with ${MEMBERS.join(", ")}`);
}

let primary = null;
const deadline = Date.now() + PRIMARY_WITHIN_MS;
while (!primary && Date.now() < deadline) {
  primary = db.adminCommand({ hello: 1 }).primary || null;
  if (!primary) sleep(1000);
}
if (!primary) {
  print(`mongo-init: no primary within ${PRIMARY_WITHIN_MS / 1000} s`);
  quit(1);
}

// Users are written on the primary, with the majority write concern (the default on a replica set).
const uri = `mongodb://${encodeURIComponent(rootUser)}:${encodeURIComponent(rootPassword)}@${primary}/admin`;
const target = new Mongo(uri).getDB(appDb);
const roles = [{ role: "readWrite", db: appDb }];
if (target.getUser(appUser)) {
  target.updateUser(appUser, { pwd: appPassword, roles });
  print(`mongo-init: user ${appUser} on ${appDb} updated`);
} else {
  target.createUser({ user: appUser, pwd: appPassword, roles });
  print(`mongo-init: user ${appUser} on ${appDb} created`);
}
