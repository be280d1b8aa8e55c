//! The backend-neutral contract suite: the cases every [`Store`] backend must pass.
//!
//! A case is an async fn taking a freshly opened, empty store: as `&dyn Store`, as
//! `Arc<dyn Store>` where it spawns tasks, or as two handles on one state where it checks what
//! two gateways sharing a store must see. Cases use the traits only, so a failure is a broken
//! guarantee of the text on the traits, never a detail of one backend.
//!
//! A backend's tests implement [`Fixture`] for a fresh state (a file in a temporary directory, a
//! scratch database) and invoke [`contract_tests!`] with an expression that makes one (or `None`
//! where the backend's server is not installed: the case is then skipped); it expands to one
//! `#[tokio::test]` per case, named after the case. Tests of one backend's own machinery
//! (files, pragmas, migrations) stay beside that backend.

use std::sync::Arc;

use super::{
    CHANGE_RETENTION, Change, ClientAuthMethod, Imported, LOGIN_ATTEMPT_TTL, LockScope, Lockout,
    LockoutPolicy, Lockouts, LoginAdmission, LoginVerdict, NewClient, NewUser, RefreshRecord,
    RefreshState, RefreshSuccessor, RotateError, SessionOrigin, Store, StoreError, StoredKey,
};
use crate::auth::keys::KeyAlg;
use crate::auth::username::Username;
use crate::limits::ClientNetwork;

/// One fresh, empty state of a backend, alive as long as the value (dropping it may delete it).
pub(crate) trait Fixture {
    /// A new handle on this state, with a connection of its own, as another gateway sharing the
    /// store would hold.
    async fn open(&self) -> Arc<dyn Store>;
}

/// Expands to one `#[tokio::test]` per contract case; `$fixture` is evaluated afresh in each
/// test and must be a future of an `Option` of a [`Fixture`]: `None` skips the case (the fixture
/// says why, and fails instead where skipping is not allowed).
macro_rules! contract_tests {
    ($fixture:expr) => {
        $crate::store::contract::contract_tests!(@each $fixture, [tokio::test], borrowed:
            user_crud_round_trips,
            duplicate_user_is_a_conflict,
            changes_to_a_missing_user_are_not_found,
            an_import_with_a_taken_name_adds_nothing_unless_told_to_skip_it,
            a_name_twice_in_one_import_is_added_once,
            rotation_marks_old_used_and_stores_successor_in_family,
            stolen_refresh_token_replay_revokes_the_family,
            expired_refresh_token_is_refused,
            unknown_refresh_token_is_refused,
            logged_out_family_cannot_refresh,
            failed_successor_insert_leaves_old_token_usable,
            duplicate_refresh_digest_is_refused,
            disabled_user_sessions_end_and_cannot_start,
            removed_user_tokens_are_gone_even_if_name_is_reused,
            end_sessions_revokes_every_family_of_the_user_only,
            revoked_ids_are_listed_until_expiry,
            sessions_are_listed_with_origin_and_last_use_while_live,
            revoke_session_ends_only_that_users_family,
            cuts_are_recorded_by_end_sessions_disable_and_remove_and_only_move_forward,
            reuse_within_the_grace_continues_the_family,
            reuse_after_the_grace_revokes_the_family,
            a_feed_purged_past_the_reader_tells_it_to_reload,
            purge_expired_deletes_only_expired_rows,
            abandoned_and_expired_reservations_give_their_place_back,
            a_late_success_does_not_lift_a_lockout_started_meanwhile,
            an_operator_unlock_ends_a_lockout_and_its_failures,
            attacker_failures_lock_only_the_attackers_network,
            failures_from_many_networks_meet_the_per_user_ceiling,
            a_success_forgets_its_networks_failures_but_not_the_ceiling_count,
            unlock_lifts_the_lock_of_every_network_and_everywhere,
            a_first_key_is_stored_only_into_an_empty_store,
            a_rotation_publishes_the_new_key_and_retires_the_signing_ones_at_its_activation,
            a_rotation_with_a_taken_kid_changes_nothing,
            clients_round_trip_and_a_taken_name_is_a_conflict,
            a_disabled_or_removed_client_epoch_is_revoked_through_the_feed,
            a_key_client_keeps_its_method_and_public_keys,
            a_spent_assertion_id_is_refused_until_it_expires,
        );
        $crate::store::contract::contract_tests!(@each $fixture, [tokio::test], shared:
            usable_as_shared_trait_object,
        );
        $crate::store::contract::contract_tests!(@each $fixture,
            [tokio::test(flavor = "multi_thread", worker_threads = 4)], shared:
            concurrent_refresh_race_has_exactly_one_winner,
            concurrent_refreshes_within_the_grace_all_win,
        );
        $crate::store::contract::contract_tests!(@each $fixture,
            [tokio::test(flavor = "multi_thread", worker_threads = 4)], two_handles:
            concurrent_refresh_race_across_processes_has_exactly_one_winner,
            concurrent_admissions_never_exceed_the_failure_budget,
            every_revocation_and_cut_reaches_the_other_handle_through_the_feed,
            concurrent_admissions_are_counted_per_network_and_per_name,
            concurrent_feed_writes_reach_a_follower_exactly_once,
            concurrent_first_start_agrees_on_one_key,
            key_changes_reach_the_other_handle_through_the_feed,
            a_replayed_assertion_is_refused_by_the_other_handle,
        );
    };
    (@each $fixture:expr, [$attr:meta], $how:ident: $($case:ident),+ $(,)?) => {
        $($crate::store::contract::contract_tests!(@one $fixture, [$attr], $how, $case);)+
    };
    (@one $fixture:expr, [$attr:meta], borrowed, $case:ident) => {
        #[$attr]
        async fn $case() {
            let Some(fixture) = $fixture.await else {
                return;
            };
            let store = $crate::store::contract::Fixture::open(&fixture).await;
            $crate::store::contract::$case(&*store).await;
        }
    };
    (@one $fixture:expr, [$attr:meta], shared, $case:ident) => {
        #[$attr]
        async fn $case() {
            let Some(fixture) = $fixture.await else {
                return;
            };
            let store = $crate::store::contract::Fixture::open(&fixture).await;
            $crate::store::contract::$case(store).await;
        }
    };
    (@one $fixture:expr, [$attr:meta], two_handles, $case:ident) => {
        #[$attr]
        async fn $case() {
            let Some(fixture) = $fixture.await else {
                return;
            };
            let stores = [
                $crate::store::contract::Fixture::open(&fixture).await,
                $crate::store::contract::Fixture::open(&fixture).await,
            ];
            $crate::store::contract::$case(stores).await;
        }
    };
}
pub(crate) use contract_tests;

// Records the cases build; shared with each backend's own tests so both speak of the same ones.

pub(crate) const NOW: i64 = 1_000_000;

const TTL: i64 = 3600;

const POLICY: LockoutPolicy = LockoutPolicy {
    max_failures: 5,
    max_failures_per_user: 12,
    find_time: 600,
    ban_time: 900,
};

/// Client network `i` (10.0.i.0/24); every `i` is another network.
fn net(i: u8) -> ClientNetwork {
    ClientNetwork::of(std::net::IpAddr::from([10, 0, i, 1]))
}

/// The network most cases' attempts come from.
fn home() -> ClientNetwork {
    net(0)
}

fn locked(until: i64, scope: LockScope) -> LoginAdmission {
    LoginAdmission::Locked(Lockout { until, scope })
}

pub(crate) fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

pub(crate) fn new_user(s: &str) -> NewUser {
    NewUser {
        username: name(s),
        password_hash: format!("$argon2id$hash-of-{s}"),
        roles: vec!["admin".into(), "ops".into()],
        scopes: vec!["read".into(), "write".into()],
    }
}

pub(crate) fn digest(n: u8) -> [u8; 32] {
    [n; 32]
}

pub(crate) fn token(n: u8, family: &str, user: &str) -> RefreshRecord {
    RefreshRecord {
        digest: digest(n),
        family: family.into(),
        username: name(user),
        scopes: vec!["read".into()],
        issued_at: NOW,
        expires_at: NOW + TTL,
    }
}

fn successor(n: u8) -> RefreshSuccessor {
    RefreshSuccessor {
        digest: digest(n),
        issued_at: NOW + 10,
        expires_at: NOW + 10 + TTL,
    }
}

/// Gives the store user alice holding token 1 in family "f1".
async fn with_alice_token(store: &dyn Store) {
    store.create_user(new_user("alice")).await.unwrap();
    store
        .insert_refresh(token(1, "f1", "alice"), SessionOrigin::default())
        .await
        .unwrap();
}

pub(crate) async fn user_crud_round_trips(store: &dyn Store) {
    let alice = name("alice");

    let created = store.create_user(new_user("alice")).await.unwrap();
    assert!(!created.disabled);
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(store.user(&alice).await.unwrap(), Some(created.clone()));
    store.create_user(new_user("bob")).await.unwrap();
    let names: Vec<_> = store.list_users().await.unwrap();
    let names: Vec<&str> = names.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);

    store.set_password(&alice, "$2b$04$new").await.unwrap();
    store.set_disabled(&alice, true, NOW).await.unwrap();
    store
        .set_roles_scopes(&alice, vec!["viewer".into()], vec![])
        .await
        .unwrap();
    let got = store.user(&alice).await.unwrap().unwrap();
    assert_eq!(got.password_hash, "$2b$04$new");
    assert!(got.disabled);
    assert_eq!(got.roles, ["viewer"]);
    assert!(got.scopes.is_empty());
    assert_eq!(got.created_at, created.created_at);
    store.set_disabled(&alice, false, NOW).await.unwrap();
    assert!(!store.user(&alice).await.unwrap().unwrap().disabled);

    store.remove_user(&alice, NOW).await.unwrap();
    assert_eq!(store.user(&alice).await.unwrap(), None);
    assert_eq!(store.list_users().await.unwrap().len(), 1);
}

pub(crate) async fn duplicate_user_is_a_conflict(store: &dyn Store) {
    store.create_user(new_user("alice")).await.unwrap();
    let mut again = new_user("alice");
    again.password_hash = "$argon2id$attacker".into();
    let err = store.create_user(again).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(n) if n.as_str() == "alice"),
        "{err}"
    );
    let kept = store.user(&name("alice")).await.unwrap().unwrap();
    assert_eq!(kept.password_hash, "$argon2id$hash-of-alice");
}

async fn hashes(store: &dyn Store) -> Vec<(String, String)> {
    let users = store.list_users().await.unwrap();
    users
        .into_iter()
        .map(|u| (u.username.as_str().to_owned(), u.password_hash))
        .collect()
}

pub(crate) async fn an_import_with_a_taken_name_adds_nothing_unless_told_to_skip_it(
    store: &dyn Store,
) {
    store.create_user(new_user("alice")).await.unwrap();
    let mut taken = new_user("alice");
    taken.password_hash = "$argon2id$imported".into();
    // bob comes before the taken name: refusing must roll his insert back too.
    let batch = || vec![new_user("bob"), taken.clone(), new_user("carol")];
    let refused = store.import_users(batch(), false).await.unwrap();
    assert_eq!(
        refused,
        Imported {
            added: 0,
            existing: vec![name("alice")],
        }
    );
    let before = vec![("alice".to_owned(), "$argon2id$hash-of-alice".to_owned())];
    assert_eq!(
        hashes(store).await,
        before,
        "a refused import wrote something"
    );

    let skipped = store.import_users(batch(), true).await.unwrap();
    assert_eq!(
        skipped,
        Imported {
            added: 2,
            existing: vec![name("alice")],
        }
    );
    let after = hashes(store).await;
    let names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(
        after[0].1, "$argon2id$hash-of-alice",
        "a skipped user was changed"
    );
    let bob = store.user(&name("bob")).await.unwrap().unwrap();
    assert!(!bob.disabled);
    assert_eq!(bob.created_at, bob.updated_at);
}

pub(crate) async fn a_name_twice_in_one_import_is_added_once(store: &dyn Store) {
    let mut again = new_user("dave");
    again.password_hash = "$argon2id$second".into();
    let batch = vec![new_user("dave"), again];
    let refused = store.import_users(batch.clone(), false).await.unwrap();
    assert_eq!(refused.added, 0);
    assert_eq!(refused.existing, [name("dave")]);
    assert!(store.list_users().await.unwrap().is_empty());
    let skipped = store.import_users(batch, true).await.unwrap();
    assert_eq!(skipped.added, 1);
    assert_eq!(
        hashes(store).await,
        [("dave".to_owned(), "$argon2id$hash-of-dave".to_owned())]
    );
}

pub(crate) async fn changes_to_a_missing_user_are_not_found(store: &dyn Store) {
    let ghost = name("ghost");
    let is_not_found = |r: Result<(), StoreError>| matches!(r, Err(StoreError::NotFound(n)) if n.as_str() == "ghost");
    assert!(is_not_found(store.set_password(&ghost, "h").await));
    assert!(is_not_found(store.set_disabled(&ghost, true, NOW).await));
    assert!(is_not_found(
        store.set_roles_scopes(&ghost, vec![], vec![]).await
    ));
    assert!(is_not_found(store.remove_user(&ghost, NOW).await));
    assert!(is_not_found(
        store
            .insert_refresh(token(1, "f", "ghost"), SessionOrigin::default())
            .await
    ));
    assert_eq!(store.user(&ghost).await.unwrap(), None);
}

pub(crate) async fn rotation_marks_old_used_and_stores_successor_in_family(store: &dyn Store) {
    with_alice_token(store).await;
    let old = store
        .rotate_refresh(&digest(1), successor(2), NOW + 10, 0)
        .await
        .unwrap();
    assert_eq!(old, token(1, "f1", "alice"));

    let (_, old_state) = store.refresh(&digest(1)).await.unwrap().unwrap();
    assert_eq!(old_state.used_at, Some(NOW + 10));
    let (new, new_state) = store.refresh(&digest(2)).await.unwrap().unwrap();
    assert_eq!(new.family, "f1");
    assert_eq!(new.username.as_str(), "alice");
    assert_eq!(new.scopes, ["read"]);
    assert_eq!((new.issued_at, new.expires_at), (NOW + 10, NOW + 10 + TTL));
    assert!(new_state.is_live(&new, NOW + 10));

    // The successor rotates in turn.
    store
        .rotate_refresh(&digest(2), successor(3), NOW + 20, 0)
        .await
        .unwrap();
}

pub(crate) async fn stolen_refresh_token_replay_revokes_the_family(store: &dyn Store) {
    with_alice_token(store).await;
    store
        .insert_refresh(token(9, "other", "alice"), SessionOrigin::default())
        .await
        .unwrap();
    store
        .rotate_refresh(&digest(1), successor(2), NOW + 10, 0)
        .await
        .unwrap();

    // The thief replays the old token: refused, and the family is revoked.
    let err = store
        .rotate_refresh(&digest(1), successor(3), NOW + 20, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RotateError::Reused { family, username }
            if family == "f1" && username.as_str() == "alice"),
        "{err}"
    );
    assert_eq!(store.refresh(&digest(3)).await.unwrap(), None);

    // The sibling the legitimate client holds is now dead too.
    let err = store
        .rotate_refresh(&digest(2), successor(4), NOW + 30, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Revoked), "{err}");
    let (_, state) = store.refresh(&digest(2)).await.unwrap().unwrap();
    assert!(state.revoked_at.is_some());

    // Another family of the same user is untouched.
    store
        .rotate_refresh(&digest(9), successor(5), NOW + 30, 0)
        .await
        .unwrap();
}

pub(crate) async fn expired_refresh_token_is_refused(store: &dyn Store) {
    with_alice_token(store).await;
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW + TTL, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Expired), "{err}");
    // Nothing changed: the token is not marked used and no successor exists.
    let (_, state) = store.refresh(&digest(1)).await.unwrap().unwrap();
    assert_eq!(state, RefreshState::default());
    assert_eq!(store.refresh(&digest(2)).await.unwrap(), None);
    // One second earlier it is still valid.
    store
        .rotate_refresh(&digest(1), successor(2), NOW + TTL - 1, 0)
        .await
        .unwrap();
}

pub(crate) async fn unknown_refresh_token_is_refused(store: &dyn Store) {
    with_alice_token(store).await;
    let err = store
        .rotate_refresh(&digest(7), successor(2), NOW, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Unknown), "{err}");
    assert_eq!(store.refresh(&digest(2)).await.unwrap(), None);
}

pub(crate) async fn logged_out_family_cannot_refresh(store: &dyn Store) {
    with_alice_token(store).await;
    let (record, _) = store.refresh(&digest(1)).await.unwrap().unwrap();
    store.revoke_family(&record.family).await.unwrap();
    store.revoke_family(&record.family).await.unwrap();
    store.revoke_family("no-such-family").await.unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Revoked), "{err}");
}

pub(crate) async fn failed_successor_insert_leaves_old_token_usable(store: &dyn Store) {
    with_alice_token(store).await;
    store
        .insert_refresh(token(2, "f2", "alice"), SessionOrigin::default())
        .await
        .unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RotateError::Store(StoreError::DuplicateRefresh)),
        "{err}"
    );
    let (_, state) = store.refresh(&digest(1)).await.unwrap().unwrap();
    assert_eq!(
        state.used_at, None,
        "the rollback must undo marking it used"
    );
    store
        .rotate_refresh(&digest(1), successor(3), NOW, 0)
        .await
        .unwrap();
}

pub(crate) async fn duplicate_refresh_digest_is_refused(store: &dyn Store) {
    with_alice_token(store).await;
    let err = store
        .insert_refresh(token(1, "f9", "alice"), SessionOrigin::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateRefresh), "{err}");
    let (record, _) = store.refresh(&digest(1)).await.unwrap().unwrap();
    assert_eq!(record.family, "f1");
}

pub(crate) async fn disabled_user_sessions_end_and_cannot_start(store: &dyn Store) {
    with_alice_token(store).await;
    let alice = name("alice");
    store.set_disabled(&alice, true, NOW).await.unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Revoked), "{err}");
    let err = store
        .insert_refresh(token(3, "f3", "alice"), SessionOrigin::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Disabled(_)), "{err}");

    // Re-enabling does not resurrect the old family.
    store.set_disabled(&alice, false, NOW).await.unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Revoked), "{err}");
    store
        .insert_refresh(token(3, "f3", "alice"), SessionOrigin::default())
        .await
        .unwrap();
}

pub(crate) async fn removed_user_tokens_are_gone_even_if_name_is_reused(store: &dyn Store) {
    with_alice_token(store).await;
    let alice = name("alice");
    store.remove_user(&alice, NOW).await.unwrap();
    assert_eq!(store.refresh(&digest(1)).await.unwrap(), None);
    store.create_user(new_user("alice")).await.unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Unknown), "{err}");
}

pub(crate) async fn end_sessions_revokes_every_family_of_the_user_only(store: &dyn Store) {
    with_alice_token(store).await;
    store
        .insert_refresh(token(2, "f2", "alice"), SessionOrigin::default())
        .await
        .unwrap();
    store.create_user(new_user("bob")).await.unwrap();
    store
        .insert_refresh(token(3, "f3", "bob"), SessionOrigin::default())
        .await
        .unwrap();
    store.end_sessions(&name("alice"), NOW).await.unwrap();
    for (n, live) in [(1, false), (2, false), (3, true)] {
        let (record, state) = store.refresh(&digest(n)).await.unwrap().unwrap();
        assert_eq!(state.is_live(&record, NOW), live, "token {n}");
    }
}

pub(crate) async fn concurrent_refresh_race_has_exactly_one_winner(store: Arc<dyn Store>) {
    with_alice_token(&*store).await;
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .rotate_refresh(&digest(1), successor(100 + i), NOW, 0)
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(RotateError::Reused { .. }) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(wins, 1);
}

pub(crate) async fn concurrent_refresh_race_across_processes_has_exactly_one_winner(
    stores: [Arc<dyn Store>; 2],
) {
    // Two handles on one state stand in for two processes: only the backend's own locking
    // separates them, nothing a handle keeps in memory (SQLite: two connections to one file).
    with_alice_token(&*stores[0]).await;
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let store = Arc::clone(&stores[usize::from(i % 2)]);
            tokio::spawn(async move {
                store
                    .rotate_refresh(&digest(1), successor(100 + i), NOW, 0)
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let wins = outcomes.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(RotateError::Reused { .. })))
    );
}

pub(crate) async fn revoked_ids_are_listed_until_expiry(store: &dyn Store) {
    store.revoke_id("a", NOW + 100).await.unwrap();
    store.revoke_id("b", NOW + 200).await.unwrap();
    // Revoking again never shortens the denylisting.
    store.revoke_id("b", NOW + 50).await.unwrap();

    let owned = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(j, e)| ((*j).to_owned(), *e)).collect()
    };
    assert_eq!(
        store.revoked_ids(NOW).await.unwrap(),
        owned(&[("a", NOW + 100), ("b", NOW + 200)])
    );
    assert_eq!(
        store.revoked_ids(NOW + 100).await.unwrap(),
        owned(&[("b", NOW + 200)])
    );
    // Asked about an earlier time, the store would still list "a" had it only been filtered.
    assert_eq!(
        store.revoked_ids(NOW).await.unwrap(),
        owned(&[("b", NOW + 200)]),
        "expired ids are purged on the way"
    );
    assert!(store.revoked_ids(NOW + 200).await.unwrap().is_empty());
}

pub(crate) async fn purge_expired_deletes_only_expired_rows(store: &dyn Store) {
    with_alice_token(store).await;
    let mut long = token(2, "f2", "alice");
    long.expires_at = NOW + 10 * TTL;
    store
        .insert_refresh(long, SessionOrigin::default())
        .await
        .unwrap();
    store.revoke_id("a", NOW + TTL).await.unwrap();
    store.revoke_id("b", NOW + 10 * TTL).await.unwrap();
    assert_eq!(store.purge_expired(NOW).await.unwrap(), 0);
    // Token 1, id "a", and token 1's session, which has no token left.
    assert_eq!(store.purge_expired(NOW + TTL).await.unwrap(), 3);
    let sessions = store.sessions(None, NOW).await.unwrap();
    assert_eq!(
        sessions
            .iter()
            .map(|s| s.family.as_str())
            .collect::<Vec<_>>(),
        ["f2"]
    );
    assert_eq!(store.refresh(&digest(1)).await.unwrap(), None);
    assert!(store.refresh(&digest(2)).await.unwrap().is_some());
    assert_eq!(store.revoked_ids(NOW).await.unwrap().len(), 1);
}

fn origin(addr: &str, agent: &str) -> SessionOrigin {
    SessionOrigin {
        client_addr: Some(addr.into()),
        user_agent: Some(agent.into()),
    }
}

pub(crate) async fn sessions_are_listed_with_origin_and_last_use_while_live(store: &dyn Store) {
    store.create_user(new_user("alice")).await.unwrap();
    store.create_user(new_user("bob")).await.unwrap();
    let at = origin("192.0.2.7", "curl/8");
    store
        .insert_refresh(token(1, "f1", "alice"), at.clone())
        .await
        .unwrap();
    store
        .insert_refresh(token(2, "f2", "bob"), SessionOrigin::default())
        .await
        .unwrap();
    store
        .rotate_refresh(&digest(1), successor(3), NOW + 10, 0)
        .await
        .unwrap();
    let all = store.sessions(None, NOW + 10).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let alice = &all[0];
    assert_eq!(
        (alice.family.as_str(), alice.username.as_str()),
        ("f1", "alice")
    );
    assert_eq!((alice.created_at, alice.last_used_at), (NOW, NOW + 10));
    assert_eq!(alice.expires_at, NOW + 10 + TTL, "the live token's expiry");
    assert_eq!(alice.origin, at);
    assert_eq!(all[1].origin, SessionOrigin::default());
    let only = store.sessions(Some(&name("bob")), NOW).await.unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].family, "f2");
    // Ended sessions and expired ones are not listed.
    store.revoke_family("f2").await.unwrap();
    assert!(
        store
            .sessions(Some(&name("bob")), NOW)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .sessions(None, NOW + 20 + TTL)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn revoke_session_ends_only_that_users_family(store: &dyn Store) {
    with_alice_token(store).await;
    store.create_user(new_user("bob")).await.unwrap();
    store
        .insert_refresh(token(2, "f2", "bob"), SessionOrigin::default())
        .await
        .unwrap();
    assert!(!store.revoke_session(&name("bob"), "f1", NOW).await.unwrap());
    assert!(
        !store
            .revoke_session(&name("alice"), "nope", NOW)
            .await
            .unwrap()
    );
    let (record, state) = store.refresh(&digest(1)).await.unwrap().unwrap();
    assert!(
        state.is_live(&record, NOW),
        "bob cannot end alice's session"
    );
    assert!(
        store
            .revoke_session(&name("alice"), "f1", NOW)
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_session(&name("alice"), "f1", NOW)
            .await
            .unwrap(),
        "nothing left to end"
    );
    let (record, state) = store.refresh(&digest(1)).await.unwrap().unwrap();
    assert!(!state.is_live(&record, NOW));
    let (record, state) = store.refresh(&digest(2)).await.unwrap().unwrap();
    assert!(state.is_live(&record, NOW));
}

pub(crate) async fn cuts_are_recorded_by_end_sessions_disable_and_remove_and_only_move_forward(
    store: &dyn Store,
) {
    with_alice_token(store).await;
    store.create_user(new_user("bob")).await.unwrap();
    store.create_user(new_user("carol")).await.unwrap();
    assert!(store.session_cuts().await.unwrap().is_empty());
    assert_eq!(store.end_sessions(&name("alice"), NOW).await.unwrap(), 1);
    assert_eq!(store.end_sessions(&name("alice"), NOW).await.unwrap(), 0);
    // An earlier cut never moves the mark back.
    store.end_sessions(&name("alice"), NOW - 100).await.unwrap();
    store
        .set_disabled(&name("bob"), true, NOW + 5)
        .await
        .unwrap();
    // Enabling records nothing.
    store
        .set_disabled(&name("bob"), false, NOW + 9)
        .await
        .unwrap();
    store.remove_user(&name("carol"), NOW + 7).await.unwrap();
    // A name without an account is cut all the same (a removed user, a typo is harmless).
    store.end_sessions(&name("dave"), NOW + 8).await.unwrap();
    assert_eq!(
        store.session_cuts().await.unwrap(),
        [
            (name("alice"), NOW + 1),
            (name("bob"), NOW + 6),
            (name("carol"), NOW + 8),
            (name("dave"), NOW + 9),
        ]
    );
    // The cut outlives the account: a new carol does not lift it.
    store.create_user(new_user("carol")).await.unwrap();
    assert!(
        store
            .session_cuts()
            .await
            .unwrap()
            .contains(&(name("carol"), NOW + 8))
    );
    // A failed remove cuts nothing.
    assert!(matches!(
        store.remove_user(&name("erin"), NOW).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.session_cuts().await.unwrap().len(), 4);
}

pub(crate) async fn reuse_within_the_grace_continues_the_family(store: &dyn Store) {
    with_alice_token(store).await;
    store
        .rotate_refresh(&digest(1), successor(2), NOW + 10, 5)
        .await
        .unwrap();
    // Presented again 4 s after its use (< 5): a sibling of token 2, the family lives on.
    let again = store
        .rotate_refresh(&digest(1), successor(3), NOW + 14, 5)
        .await
        .unwrap();
    assert_eq!(again.family, "f1");
    for n in [2, 3] {
        let (record, state) = store.refresh(&digest(n)).await.unwrap().unwrap();
        assert!(state.is_live(&record, NOW + 14), "token {n}");
        assert_eq!(record.family, "f1");
    }
}

pub(crate) async fn reuse_after_the_grace_revokes_the_family(store: &dyn Store) {
    with_alice_token(store).await;
    store
        .rotate_refresh(&digest(1), successor(2), NOW + 10, 5)
        .await
        .unwrap();
    // Exactly at the end of the grace (used_at + grace): too late.
    let err = store
        .rotate_refresh(&digest(1), successor(3), NOW + 15, 5)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Reused { .. }), "{err}");
    let (record, state) = store.refresh(&digest(2)).await.unwrap().unwrap();
    assert!(!state.is_live(&record, NOW + 15), "the family is revoked");
    // A revoked family gets no grace either.
    let err = store
        .rotate_refresh(&digest(1), successor(4), NOW + 11, 5)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Reused { .. }), "{err}");
}

pub(crate) async fn concurrent_refreshes_within_the_grace_all_win(store: Arc<dyn Store>) {
    with_alice_token(&*store).await;
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .rotate_refresh(&digest(1), successor(100 + i), NOW, 30)
                    .await
            })
        })
        .collect();
    for task in tasks {
        let rotated = task.await.unwrap();
        assert!(rotated.is_ok(), "{rotated:?}");
    }
    for i in 0..20u8 {
        let (record, state) = store.refresh(&digest(100 + i)).await.unwrap().unwrap();
        assert!(state.is_live(&record, NOW), "successor {i}");
    }
}

pub(crate) async fn every_revocation_and_cut_reaches_the_other_handle_through_the_feed(
    stores: [Arc<dyn Store>; 2],
) {
    let [writer, reader] = stores;
    let start = reader.change_seq().await.unwrap();
    let empty = reader.changes_since(start, 100).await.unwrap();
    assert!(empty.changes.is_empty() && empty.complete);
    assert_eq!(empty.last, start);
    writer.create_user(new_user("alice")).await.unwrap();
    writer.revoke_id("jti-1", NOW + 100).await.unwrap();
    writer.end_sessions(&name("alice"), NOW).await.unwrap();
    writer
        .set_disabled(&name("alice"), true, NOW + 1)
        .await
        .unwrap();
    writer.revoke_id("sid-1", NOW + 50).await.unwrap();
    let batch = reader.changes_since(start, 100).await.unwrap();
    assert!(batch.complete);
    assert_eq!(
        batch.changes,
        [
            Change::Revoked {
                id: "jti-1".into(),
                expires_at: NOW + 100
            },
            Change::SessionsCut {
                username: name("alice"),
                not_before: NOW + 1
            },
            Change::SessionsCut {
                username: name("alice"),
                not_before: NOW + 2
            },
            Change::Revoked {
                id: "sid-1".into(),
                expires_at: NOW + 50
            },
        ]
    );
    assert_eq!(batch.last, reader.change_seq().await.unwrap());
    // In pages of `max`, continuing from `last`.
    let first = reader.changes_since(start, 3).await.unwrap();
    assert_eq!(first.changes, batch.changes[..3]);
    let rest = reader.changes_since(first.last, 3).await.unwrap();
    assert_eq!(rest.changes, batch.changes[3..]);
    assert_eq!(rest.last, batch.last);
    // A cut that moved nothing still says where the mark is.
    writer.end_sessions(&name("alice"), NOW - 10).await.unwrap();
    let after = reader.changes_since(batch.last, 100).await.unwrap();
    assert_eq!(
        after.changes,
        [Change::SessionsCut {
            username: name("alice"),
            not_before: NOW + 2
        }]
    );
}

pub(crate) async fn a_feed_purged_past_the_reader_tells_it_to_reload(store: &dyn Store) {
    let start = store.change_seq().await.unwrap();
    store.revoke_id("a", i64::MAX).await.unwrap();
    store.revoke_id("b", i64::MAX).await.unwrap();
    let seen = store.changes_since(start, 1).await.unwrap();
    assert_eq!(seen.changes.len(), 1);
    // Bookkeeping times are the backend's clock: purge as of well after the retention.
    let later = crate::clock::unix_now() + CHANGE_RETENTION + 10;
    store.purge_expired(later).await.unwrap();
    let behind = store.changes_since(seen.last, 100).await.unwrap();
    assert!(!behind.complete, "{behind:?}");
    // A reader that had seen everything is not told to reload.
    let latest = store.change_seq().await.unwrap();
    assert_eq!(latest, seen.last + 1, "the sequence survives the purge");
    let caught_up = store.changes_since(latest, 100).await.unwrap();
    assert!(caught_up.complete && caught_up.changes.is_empty());
    store.revoke_id("c", i64::MAX).await.unwrap();
    let next = store.changes_since(latest, 100).await.unwrap();
    assert!(next.complete);
    assert_eq!(next.changes.len(), 1);
    // The purged state itself is still there to reload from.
    assert_eq!(store.revoked_ids(later).await.unwrap().len(), 3);
}

/// Two handles on one state (for SQLite, two connections to one file), as two gateways sharing
/// it would have, admitting 40 attempts from threads at once: the budget holds across handles.
pub(crate) async fn concurrent_admissions_never_exceed_the_failure_budget(
    stores: [Arc<dyn Store>; 2],
) {
    let admits = (0..40).map(|i| {
        let store = stores[i % 2].clone();
        tokio::spawn(async move { store.admit_login(&name("alice"), home(), NOW, POLICY).await })
    });
    let mut admitted = Vec::new();
    for admit in admits {
        match admit.await.unwrap().unwrap() {
            LoginAdmission::Admitted(id) => admitted.push(id),
            LoginAdmission::Exhausted => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted.len(), 5, "{admitted:?}");
    // Failures take the places over: still nothing free, then the fifth locks.
    let store = &stores[0];
    for (i, id) in admitted.iter().enumerate() {
        let until = store
            .finish_login(
                &name("alice"),
                home(),
                *id,
                NOW,
                POLICY,
                LoginVerdict::Failed,
            )
            .await
            .unwrap();
        let until = until.map(|l| (l.until, l.scope));
        assert_eq!(
            until,
            (i == 4).then_some((NOW + POLICY.ban_time, LockScope::Network))
        );
        if i < 4 {
            assert_eq!(
                store
                    .admit_login(&name("alice"), home(), NOW, POLICY)
                    .await
                    .unwrap(),
                LoginAdmission::Exhausted
            );
        }
    }
    assert_eq!(
        store
            .admit_login(&name("alice"), home(), NOW, POLICY)
            .await
            .unwrap(),
        locked(NOW + POLICY.ban_time, LockScope::Network)
    );
}

pub(crate) async fn abandoned_and_expired_reservations_give_their_place_back(store: &dyn Store) {
    let alice = name("alice");
    let policy = LockoutPolicy {
        max_failures: 1,
        ..POLICY
    };
    let LoginAdmission::Admitted(id) = store
        .admit_login(&alice, home(), NOW, policy)
        .await
        .unwrap()
    else {
        panic!("first attempt refused");
    };
    assert_eq!(
        store
            .admit_login(&alice, home(), NOW, policy)
            .await
            .unwrap(),
        LoginAdmission::Exhausted
    );
    store
        .finish_login(&alice, home(), id, NOW, policy, LoginVerdict::Abandoned)
        .await
        .unwrap();
    // A reservation never finished (the process died) stops counting after its TTL.
    assert!(matches!(
        store
            .admit_login(&alice, home(), NOW, policy)
            .await
            .unwrap(),
        LoginAdmission::Admitted(_)
    ));
    assert_eq!(
        store
            .admit_login(&alice, home(), NOW + LOGIN_ATTEMPT_TTL - 1, policy)
            .await
            .unwrap(),
        LoginAdmission::Exhausted
    );
    assert!(matches!(
        store
            .admit_login(&alice, home(), NOW + LOGIN_ATTEMPT_TTL, policy)
            .await
            .unwrap(),
        LoginAdmission::Admitted(_)
    ));
    // Other names are not affected.
    assert!(matches!(
        store
            .admit_login(&name("bob"), home(), NOW, policy)
            .await
            .unwrap(),
        LoginAdmission::Admitted(_)
    ));
}

/// A right password whose attempt outlived its reservation (a slow hash) finishes after
/// other attempts locked the name: the lockout stays.
pub(crate) async fn a_late_success_does_not_lift_a_lockout_started_meanwhile(store: &dyn Store) {
    let alice = name("alice");
    let policy = LockoutPolicy {
        max_failures: 2,
        ..POLICY
    };
    let admit = |now: i64| {
        let (store, alice) = (&store, &alice);
        async move {
            match store.admit_login(alice, home(), now, policy).await.unwrap() {
                LoginAdmission::Admitted(id) => id,
                other => panic!("{other:?}"),
            }
        }
    };
    let right = admit(NOW).await;
    let later = NOW + LOGIN_ATTEMPT_TTL;
    let (w1, w2) = (admit(later).await, admit(later).await);
    for id in [w1, w2] {
        store
            .finish_login(&alice, home(), id, later, policy, LoginVerdict::Failed)
            .await
            .unwrap();
    }
    store
        .finish_login(
            &alice,
            home(),
            right,
            later,
            policy,
            LoginVerdict::Succeeded,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .admit_login(&alice, home(), later, policy)
            .await
            .unwrap(),
        locked(later + policy.ban_time, LockScope::Network)
    );
}

/// `user unlock` is the way out of a lockout: it ends the lock and the failure count, so the
/// next wrong password starts from zero instead of locking again.
pub(crate) async fn an_operator_unlock_ends_a_lockout_and_its_failures(store: &dyn Store) {
    let alice = name("alice");
    let policy = LockoutPolicy {
        max_failures: 2,
        ..POLICY
    };
    let unlocked = Lockouts::default();
    assert_eq!(store.lockouts(&alice, NOW).await.unwrap(), unlocked);
    assert!(!store.unlock(&alice, NOW).await.unwrap());
    let fail = |now: i64| {
        let (store, alice) = (&store, &alice);
        async move {
            let LoginAdmission::Admitted(id) =
                store.admit_login(alice, home(), now, policy).await.unwrap()
            else {
                panic!("not admitted");
            };
            store
                .finish_login(alice, home(), id, now, policy, LoginVerdict::Failed)
                .await
                .unwrap()
        }
    };
    fail(NOW).await;
    let until = fail(NOW).await.unwrap().until;
    assert_eq!(
        store.lockouts(&alice, NOW).await.unwrap().networks,
        [(home().to_string(), until)]
    );
    assert_eq!(store.lockouts(&alice, until).await.unwrap(), unlocked);
    assert_eq!(store.lockouts(&name("bob"), NOW).await.unwrap(), unlocked);

    assert!(store.unlock(&alice, NOW).await.unwrap());
    assert_eq!(store.lockouts(&alice, NOW).await.unwrap(), unlocked);
    assert!(matches!(
        store
            .admit_login(&alice, home(), NOW, policy)
            .await
            .unwrap(),
        LoginAdmission::Admitted(_)
    ));
    // The failures went with the lock: one more wrong password does not lock again.
    assert_eq!(fail(NOW).await, None);
}

/// Admits and fails one attempt on `name` from `network`; the lockout it started.
async fn fail_from(
    store: &dyn Store,
    name: &Username,
    network: ClientNetwork,
    now: i64,
    policy: LockoutPolicy,
) -> Option<Lockout> {
    let LoginAdmission::Admitted(id) = store.admit_login(name, network, now, policy).await.unwrap()
    else {
        panic!("attempt from {network} not admitted");
    };
    store
        .finish_login(name, network, id, now, policy, LoginVerdict::Failed)
        .await
        .unwrap()
}

fn admitted(admission: LoginAdmission) -> bool {
    matches!(admission, LoginAdmission::Admitted(_))
}

/// The denial of service the old lockout allowed: an attacker's wrong passwords lock the name
/// for the attacker's network only; the owner, elsewhere, still gets in.
pub(crate) async fn attacker_failures_lock_only_the_attackers_network(store: &dyn Store) {
    let alice = name("alice");
    let policy = LockoutPolicy {
        max_failures: 2,
        ..POLICY
    };
    let attacker = net(66);
    assert_eq!(fail_from(store, &alice, attacker, NOW, policy).await, None);
    let lock = fail_from(store, &alice, attacker, NOW, policy).await;
    let until = NOW + policy.ban_time;
    assert_eq!(
        lock,
        Some(Lockout {
            until,
            scope: LockScope::Network
        })
    );
    assert_eq!(
        store
            .admit_login(&alice, attacker, NOW, policy)
            .await
            .unwrap(),
        locked(until, LockScope::Network)
    );
    // Another address of the same /24 is the same network.
    let neighbour = ClientNetwork::of(std::net::IpAddr::from([10, 0, 66, 200]));
    assert_eq!(neighbour, attacker);
    // The owner's network, IPv4 or IPv6, is admitted, and so is the name elsewhere.
    let v6 = ClientNetwork::of("2001:db8:1:2::1".parse().unwrap());
    for owner in [home(), v6] {
        let LoginAdmission::Admitted(id) =
            store.admit_login(&alice, owner, NOW, policy).await.unwrap()
        else {
            panic!("owner refused from {owner}");
        };
        store
            .finish_login(&alice, owner, id, NOW, policy, LoginVerdict::Succeeded)
            .await
            .unwrap();
    }
    // The owner's success lifts nothing of the attacker's lock.
    assert_eq!(
        store
            .admit_login(&alice, attacker, NOW, policy)
            .await
            .unwrap(),
        locked(until, LockScope::Network)
    );
    let shown = store.lockouts(&alice, NOW).await.unwrap();
    assert_eq!(shown.everywhere, None);
    assert_eq!(shown.networks, [("10.0.66.0/24".to_owned(), until)]);
    assert!(shown.is_locked());
    // Other names are not locked from the attacker's network.
    assert!(admitted(
        store
            .admit_login(&name("bob"), attacker, NOW, policy)
            .await
            .unwrap()
    ));
}

/// Guessing spread over many networks, each below its own limit, still ends: the name's failures
/// from everywhere reach `max_failures_per_user` and lock it for every network.
pub(crate) async fn failures_from_many_networks_meet_the_per_user_ceiling(store: &dyn Store) {
    let alice = name("alice");
    let policy = LockoutPolicy {
        max_failures: 3,
        max_failures_per_user: 7,
        ..POLICY
    };
    let mut locks = Vec::new();
    for i in 1..=7 {
        locks.push(fail_from(store, &alice, net(i), NOW, policy).await);
    }
    let until = NOW + policy.ban_time;
    let everywhere = Lockout {
        until,
        scope: LockScope::Everywhere,
    };
    assert_eq!(locks[..6], [None; 6]);
    assert_eq!(locks[6], Some(everywhere));
    for network in [home(), net(1), net(200)] {
        assert_eq!(
            store
                .admit_login(&alice, network, NOW, policy)
                .await
                .unwrap(),
            locked(until, LockScope::Everywhere),
            "{network}"
        );
    }
    assert_eq!(
        store.lockouts(&alice, NOW).await.unwrap().everywhere,
        Some(until)
    );
    // Past the ban the name is admitted again, from anywhere.
    assert!(admitted(
        store
            .admit_login(&alice, home(), until, policy)
            .await
            .unwrap()
    ));
    // The failure that reaches both limits at once reports the lock everywhere.
    let bob = name("bob");
    let both = LockoutPolicy {
        max_failures: 2,
        max_failures_per_user: 2,
        ..POLICY
    };
    fail_from(store, &bob, home(), NOW, both).await;
    assert_eq!(
        fail_from(store, &bob, home(), NOW, both).await,
        Some(everywhere)
    );
    let shown = store.lockouts(&bob, NOW).await.unwrap();
    assert_eq!(shown.everywhere, Some(until));
    assert_eq!(shown.networks, [(home().to_string(), until)]);
}

/// A right password forgets the failures of its own network; the count across networks only
/// expires, or every login of the owner would give a distributed guesser a fresh ceiling.
pub(crate) async fn a_success_forgets_its_networks_failures_but_not_the_ceiling_count(
    store: &dyn Store,
) {
    let alice = name("alice");
    let policy = LockoutPolicy {
        max_failures: 2,
        max_failures_per_user: 4,
        ..POLICY
    };
    fail_from(store, &alice, home(), NOW, policy).await;
    fail_from(store, &alice, net(1), NOW, policy).await;
    fail_from(store, &alice, net(2), NOW, policy).await;
    let LoginAdmission::Admitted(id) = store
        .admit_login(&alice, home(), NOW, policy)
        .await
        .unwrap()
    else {
        panic!("owner refused");
    };
    store
        .finish_login(&alice, home(), id, NOW, policy, LoginVerdict::Succeeded)
        .await
        .unwrap();
    // Home's earlier failure is forgotten: one more there does not lock home... but it is the
    // fourth failure of the name, which reaches the ceiling.
    assert_eq!(
        fail_from(store, &alice, home(), NOW, policy).await,
        Some(Lockout {
            until: NOW + policy.ban_time,
            scope: LockScope::Everywhere
        })
    );
    assert!(
        store
            .lockouts(&alice, NOW)
            .await
            .unwrap()
            .networks
            .is_empty(),
        "home must not be locked by its own forgotten failure"
    );
    // Failures older than find_time no longer count towards the ceiling.
    let carol = name("carol");
    for i in 1..=3 {
        fail_from(store, &carol, net(i), NOW, policy).await;
    }
    let later = NOW + policy.find_time;
    assert_eq!(fail_from(store, &carol, net(4), later, policy).await, None);
}

/// `user unlock` lifts every lock of the name: every network's and the one everywhere, with the
/// failures behind them.
pub(crate) async fn unlock_lifts_the_lock_of_every_network_and_everywhere(store: &dyn Store) {
    let alice = name("alice");
    let policy = LockoutPolicy {
        max_failures: 2,
        max_failures_per_user: 5,
        ..POLICY
    };
    for network in [net(1), net(1), net(2), net(2), net(3)] {
        fail_from(store, &alice, network, NOW, policy).await;
    }
    let shown = store.lockouts(&alice, NOW).await.unwrap();
    assert_eq!(shown.everywhere, Some(NOW + policy.ban_time));
    assert_eq!(shown.networks.len(), 2, "{shown:?}");
    // Bob's lock is his own.
    fail_from(store, &name("bob"), net(1), NOW, policy).await;
    fail_from(store, &name("bob"), net(1), NOW, policy).await;

    assert!(store.unlock(&alice, NOW).await.unwrap());
    assert_eq!(
        store.lockouts(&alice, NOW).await.unwrap(),
        Lockouts::default()
    );
    for network in [net(1), net(2), net(3)] {
        // Admitted, and the failures went too: one more does not lock the network again.
        assert_eq!(fail_from(store, &alice, network, NOW, policy).await, None);
    }
    assert_eq!(
        store
            .lockouts(&name("bob"), NOW)
            .await
            .unwrap()
            .networks
            .len(),
        1
    );
}

/// Reservations hold places in both budgets: 20 parallel attempts from one network take exactly
/// its `max_failures` places; then 20 from as many other networks take exactly what is left of
/// the name's ceiling, with the first ones still in flight. Two handles, as two gateways.
pub(crate) async fn concurrent_admissions_are_counted_per_network_and_per_name(
    stores: [Arc<dyn Store>; 2],
) {
    let policy = LockoutPolicy {
        max_failures: 3,
        max_failures_per_user: 5,
        ..POLICY
    };
    let admit_all = |networks: Vec<ClientNetwork>| {
        let stores = stores.clone();
        async move {
            let admits = networks.into_iter().enumerate().map(|(i, network)| {
                let store = stores[i % 2].clone();
                tokio::spawn(async move {
                    store
                        .admit_login(&name("alice"), network, NOW, policy)
                        .await
                })
            });
            let mut admitted = 0;
            for admit in admits {
                match admit.await.unwrap().unwrap() {
                    LoginAdmission::Admitted(_) => admitted += 1,
                    LoginAdmission::Exhausted => {}
                    other => panic!("{other:?}"),
                }
            }
            admitted
        }
    };
    assert_eq!(admit_all(vec![home(); 20]).await, 3);
    assert_eq!(admit_all((1..=20).map(net).collect()).await, 2);
    assert_eq!(
        stores[0]
            .admit_login(&name("alice"), net(99), NOW, policy)
            .await
            .unwrap(),
        LoginAdmission::Exhausted
    );
    // Reservations are per name.
    assert!(admitted(
        stores[1]
            .admit_login(&name("bob"), home(), NOW, policy)
            .await
            .unwrap()
    ));
}

/// The feed's sequence numbers follow commit order: writers on two handles (two gateways)
/// revoke ids and cut sessions at once while a follower on one of them reads the feed in small
/// pages. A number taken before a later-numbered change commits first (a plain serial column
/// with concurrent writers) lets the follower step past it and never see it; the follower must
/// end with every change exactly once.
pub(crate) async fn concurrent_feed_writes_reach_a_follower_exactly_once(
    stores: [Arc<dyn Store>; 2],
) {
    use std::sync::atomic::{AtomicBool, Ordering};

    const WRITERS: usize = 6;
    const EACH: usize = 20;
    let follower = Arc::clone(&stores[1]);
    let start = follower.change_seq().await.unwrap();
    let writers_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = Arc::clone(&writers_done);
        tokio::spawn(async move {
            let (mut seen, mut last) = (Vec::new(), start);
            loop {
                // Read the flag before asking: an empty answer after every writer finished
                // means nothing is left to see.
                let finished = done.load(Ordering::Acquire);
                let batch = follower.changes_since(last, 7).await.unwrap();
                assert!(batch.complete, "nothing is purged here: {batch:?}");
                assert!(
                    batch.last >= last,
                    "the feed went back: {} < {last}",
                    batch.last
                );
                let empty = batch.changes.is_empty();
                seen.extend(batch.changes);
                last = batch.last;
                if finished && empty {
                    return (seen, last);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&stores[w % 2]);
            tokio::spawn(async move {
                for i in 0..EACH {
                    if i % 5 == 4 {
                        let user = name(&format!("writer{w}"));
                        store.end_sessions(&user, NOW + i as i64).await.unwrap();
                    } else {
                        store
                            .revoke_id(&format!("w{w}-{i}"), NOW + 100)
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    writers_done.store(true, Ordering::Release);
    let (seen, last) = reader.await.unwrap();

    let mut ids: Vec<String> = Vec::new();
    let mut cuts: Vec<(String, i64)> = Vec::new();
    for change in seen {
        match change {
            Change::KeysChanged => panic!("no key was written"),
            Change::Revoked { id, .. } => ids.push(id),
            Change::SessionsCut {
                username,
                not_before,
            } => cuts.push((username.as_str().to_owned(), not_before)),
        }
    }
    let mut expected_ids: Vec<String> = (0..WRITERS)
        .flat_map(|w| {
            (0..EACH)
                .filter(|i| i % 5 != 4)
                .map(move |i| format!("w{w}-{i}"))
        })
        .collect();
    let mut expected_cuts: Vec<(String, i64)> = (0..WRITERS)
        .flat_map(|w| {
            (0..EACH)
                .filter(|i| i % 5 == 4)
                .map(move |i| (format!("writer{w}"), NOW + i as i64 + 1))
        })
        .collect();
    ids.sort();
    expected_ids.sort();
    cuts.sort();
    expected_cuts.sort();
    let missed: Vec<_> = expected_ids.iter().filter(|id| !ids.contains(id)).collect();
    assert!(missed.is_empty(), "the follower never saw {missed:?}");
    assert_eq!(ids, expected_ids, "every revocation exactly once");
    assert_eq!(cuts, expected_cuts, "every cut exactly once");
    assert_eq!(last, stores[0].change_seq().await.unwrap());
}

pub(crate) async fn usable_as_shared_trait_object(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(store.list_users().await.unwrap().is_empty());
}

/// A stored key `kid` signing from `active_from`, with sealed bytes that name it.
fn key(kid: &str, active_from: i64) -> StoredKey {
    StoredKey {
        kid: kid.into(),
        alg: KeyAlg::EdDSA,
        sealed: format!("sealed {kid}").into_bytes(),
        created_at: NOW,
        active_from,
        retired_at: None,
    }
}

/// The kids of the keys listed with `retired_after`.
async fn kids(store: &dyn Store, retired_after: i64) -> Vec<String> {
    let keys = store.signing_keys(retired_after).await.unwrap();
    keys.into_iter().map(|k| k.kid).collect()
}

pub(crate) async fn a_first_key_is_stored_only_into_an_empty_store(store: &dyn Store) {
    assert!(store.signing_keys(0).await.unwrap().is_empty());
    let start = store.change_seq().await.unwrap();
    assert!(store.insert_first_if_empty(key("k1", NOW)).await.unwrap());
    assert!(!store.insert_first_if_empty(key("k2", NOW)).await.unwrap());
    assert_eq!(store.signing_keys(0).await.unwrap(), [key("k1", NOW)]);
    let feed = store.changes_since(start, 10).await.unwrap();
    assert_eq!(
        feed.changes,
        [Change::KeysChanged],
        "only the stored key is announced"
    );
    // Retired keys count: a store that ever had a key never takes a "first" one again.
    store.add_and_retire(key("k3", NOW + 10), 0).await.unwrap();
    store
        .add_and_retire(key("k4", NOW + 20), NOW + 10)
        .await
        .unwrap();
    assert_eq!(kids(store, 0).await, ["k3", "k4"], "k1 forgotten");
    assert!(!store.insert_first_if_empty(key("k5", NOW)).await.unwrap());
}

pub(crate) async fn a_rotation_publishes_the_new_key_and_retires_the_signing_ones_at_its_activation(
    store: &dyn Store,
) {
    assert!(store.insert_first_if_empty(key("a", NOW)).await.unwrap());
    let start = store.change_seq().await.unwrap();
    store.add_and_retire(key("b", NOW + 600), 0).await.unwrap();
    let keys = store.signing_keys(0).await.unwrap();
    assert_eq!(
        keys,
        [
            StoredKey {
                retired_at: Some(NOW + 600),
                ..key("a", NOW)
            },
            key("b", NOW + 600),
        ],
        "a signs until b does; b is listed before it signs"
    );
    // A second rotation before b signs retires b (not yet signing) at c's activation; a keeps
    // its own retirement.
    store.add_and_retire(key("c", NOW + 700), 0).await.unwrap();
    let retired: Vec<_> = store
        .signing_keys(0)
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.kid, k.retired_at))
        .collect();
    assert_eq!(
        retired,
        [
            ("a".to_owned(), Some(NOW + 600)),
            ("b".to_owned(), Some(NOW + 700)),
            ("c".to_owned(), None),
        ]
    );
    // Listing leaves out keys retired at or before the bound; they stay stored until a rotation
    // forgets them.
    assert_eq!(kids(store, NOW + 600).await, ["b", "c"]);
    assert_eq!(kids(store, NOW + 700).await, ["c"]);
    assert_eq!(kids(store, 0).await, ["a", "b", "c"]);
    store
        .add_and_retire(key("d", NOW + 800), NOW + 600)
        .await
        .unwrap();
    assert_eq!(kids(store, 0).await, ["b", "c", "d"]);
    let feed = store.changes_since(start, 10).await.unwrap();
    assert_eq!(
        feed.changes,
        [
            Change::KeysChanged,
            Change::KeysChanged,
            Change::KeysChanged
        ]
    );
}

pub(crate) async fn a_rotation_with_a_taken_kid_changes_nothing(store: &dyn Store) {
    assert!(store.insert_first_if_empty(key("a", NOW)).await.unwrap());
    store.add_and_retire(key("b", NOW + 10), 0).await.unwrap();
    let before = store.signing_keys(0).await.unwrap();
    let seq = store.change_seq().await.unwrap();
    let err = store
        .add_and_retire(key("b", NOW + 20), NOW + 5)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateKey(kid) if kid == "b"),
        "{err}"
    );
    assert_eq!(
        store.signing_keys(0).await.unwrap(),
        before,
        "nothing retired or forgotten"
    );
    assert_eq!(store.change_seq().await.unwrap(), seq, "nothing announced");
}

/// Gateways starting at once against an empty store, on two handles (two processes): exactly
/// one first key is stored, and every one of them then finds that key and no other. A check
/// and an insert that are not one step would store several, and gateways would sign with keys
/// the others have never heard of.
pub(crate) async fn concurrent_first_start_agrees_on_one_key(stores: [Arc<dyn Store>; 2]) {
    const GATEWAYS: usize = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(GATEWAYS));
    let starts: Vec<_> = (0..GATEWAYS)
        .map(|g| {
            let store = Arc::clone(&stores[g % 2]);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let won = store
                    .insert_first_if_empty(key(&format!("gateway{g}"), NOW))
                    .await
                    .unwrap();
                (won, kids(&*store, 0).await)
            })
        })
        .collect();
    let mut winners = 0;
    let mut seen = Vec::new();
    for start in starts {
        let (won, kids) = start.await.unwrap();
        winners += usize::from(won);
        seen.push(kids);
    }
    assert_eq!(winners, 1, "exactly one first key");
    let agreed = &seen[0];
    assert_eq!(agreed.len(), 1, "{agreed:?}");
    assert!(seen.iter().all(|kids| kids == agreed), "{seen:?}");
}

pub(crate) async fn key_changes_reach_the_other_handle_through_the_feed(
    stores: [Arc<dyn Store>; 2],
) {
    let [writer, reader] = stores;
    let start = reader.change_seq().await.unwrap();
    assert!(writer.insert_first_if_empty(key("a", NOW)).await.unwrap());
    writer.revoke_id("jti-1", NOW + 100).await.unwrap();
    writer.add_and_retire(key("b", NOW + 600), 0).await.unwrap();
    let batch = reader.changes_since(start, 10).await.unwrap();
    assert_eq!(
        batch.changes,
        [
            Change::KeysChanged,
            Change::Revoked {
                id: "jti-1".into(),
                expires_at: NOW + 100
            },
            Change::KeysChanged,
        ]
    );
    assert_eq!(kids(&*reader, 0).await, ["a", "b"]);
}

fn new_client(s: &str, epoch: &str) -> NewClient {
    NewClient {
        name: name(s),
        secret_digest: digest(7),
        scopes: vec!["read".into(), "write".into()],
        audiences: vec!["api".into()],
        grants: vec!["client_credentials".into()],
        auth_method: ClientAuthMethod::Secret,
        jwks: None,
        jwks_url: Some("https://ci.example/jwks.json".into()),
        epoch: epoch.into(),
    }
}

pub(crate) async fn a_key_client_keeps_its_method_and_public_keys(store: &dyn Store) {
    let jwks = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    let created = store
        .create_client(
            NewClient {
                auth_method: ClientAuthMethod::PrivateKeyJwt,
                jwks: Some(jwks.into()),
                jwks_url: None,
                ..new_client("signer", "c.k1")
            },
            NOW,
        )
        .await
        .unwrap();
    let read = store.client(&name("signer")).await.unwrap().unwrap();
    assert_eq!(read, created);
    assert_eq!(read.auth_method, ClientAuthMethod::PrivateKeyJwt);
    assert_eq!(read.jwks.as_deref(), Some(jwks));
    store
        .create_client(new_client("ci", "c.s1"), NOW)
        .await
        .unwrap();
    let listed: Vec<ClientAuthMethod> = store
        .list_clients()
        .await
        .unwrap()
        .iter()
        .map(|c| c.auth_method)
        .collect();
    assert_eq!(
        listed,
        [ClientAuthMethod::Secret, ClientAuthMethod::PrivateKeyJwt]
    );
}

pub(crate) async fn a_spent_assertion_id_is_refused_until_it_expires(store: &dyn Store) {
    let (ci, other) = (name("ci"), name("other"));
    assert!(
        store
            .spend_assertion(&ci, "j1", NOW + 60, NOW)
            .await
            .unwrap()
    );
    assert!(
        !store
            .spend_assertion(&ci, "j1", NOW + 60, NOW + 1)
            .await
            .unwrap(),
        "a replay"
    );
    assert!(
        !store
            .spend_assertion(&ci, "j1", NOW + 600, NOW + 59)
            .await
            .unwrap(),
        "a replay with another exp is still a replay"
    );
    // Another client's ids are its own.
    assert!(
        store
            .spend_assertion(&other, "j1", NOW + 60, NOW)
            .await
            .unwrap()
    );
    // Once expired, the id may be used again (the old assertion itself is now refused by exp).
    assert!(
        store
            .spend_assertion(&ci, "j1", NOW + 120, NOW + 60)
            .await
            .unwrap()
    );
    assert!(
        !store
            .spend_assertion(&ci, "j1", NOW + 120, NOW + 61)
            .await
            .unwrap()
    );
    // Purged once expired, kept before.
    assert!(
        store
            .spend_assertion(&ci, "j2", NOW + 10, NOW)
            .await
            .unwrap()
    );
    assert!(store.purge_expired(NOW + 10).await.unwrap() >= 1);
    assert!(
        !store
            .spend_assertion(&ci, "j1", NOW + 120, NOW + 11)
            .await
            .unwrap()
    );
    assert!(
        store
            .spend_assertion(&ci, "j2", NOW + 30, NOW + 11)
            .await
            .unwrap()
    );
}

pub(crate) async fn a_replayed_assertion_is_refused_by_the_other_handle(
    stores: [Arc<dyn Store>; 2],
) {
    let ci = name("ci");
    let mut tasks = Vec::new();
    for round in 0..10 {
        for store in &stores {
            let (store, ci) = (Arc::clone(store), ci.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .spend_assertion(&ci, &format!("j{round}"), NOW + 60, NOW)
                    .await
                    .unwrap()
            }));
        }
    }
    let mut won = 0;
    for task in tasks {
        won += usize::from(task.await.unwrap());
    }
    assert_eq!(won, 10, "each id is spent exactly once across both handles");
}

pub(crate) async fn clients_round_trip_and_a_taken_name_is_a_conflict(store: &dyn Store) {
    let created = store
        .create_client(new_client("ci", "c.e1"), NOW)
        .await
        .unwrap();
    assert!(!created.disabled);
    assert_eq!((created.created_at, created.rotated_at), (NOW, NOW));
    assert_eq!(
        store.client(&name("ci")).await.unwrap(),
        Some(created.clone())
    );
    assert!(matches!(
        store.create_client(new_client("ci", "c.e2"), NOW).await,
        Err(StoreError::ClientConflict(n)) if n == "ci"
    ));
    // A user of the same name is another name space.
    store.create_user(new_user("ci")).await.unwrap();
    store
        .create_client(new_client("backup", "c.e3"), NOW)
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name.as_str().to_owned())
        .collect();
    assert_eq!(names, ["backup", "ci"]);

    store
        .rotate_client_secret(&name("ci"), digest(8), NOW + 5)
        .await
        .unwrap();
    let rotated = store.client(&name("ci")).await.unwrap().unwrap();
    assert_eq!(rotated.secret_digest, digest(8));
    assert_eq!(
        rotated.epoch, "c.e1",
        "a rotation keeps the epoch a disable revokes"
    );
    assert_eq!((rotated.created_at, rotated.rotated_at), (NOW, NOW + 5));
    assert_eq!(rotated.scopes, created.scopes);
    assert_eq!(rotated.jwks_url, created.jwks_url);

    for missing in [
        store
            .rotate_client_secret(&name("nobody"), digest(1), NOW)
            .await,
        store
            .set_client_disabled(&name("nobody"), true, "x", NOW)
            .await,
        store.remove_client(&name("nobody"), NOW).await,
    ] {
        assert!(
            matches!(missing, Err(StoreError::ClientNotFound(_))),
            "{missing:?}"
        );
    }
    assert!(store.user(&name("ci")).await.unwrap().is_some());
}

pub(crate) async fn a_disabled_or_removed_client_epoch_is_revoked_through_the_feed(
    store: &dyn Store,
) {
    store
        .create_client(new_client("ci", "c.e1"), NOW)
        .await
        .unwrap();
    let seq = store.change_seq().await.unwrap();
    store
        .set_client_disabled(&name("ci"), true, "unused", NOW + TTL)
        .await
        .unwrap();
    assert!(store.client(&name("ci")).await.unwrap().unwrap().disabled);
    let batch = store.changes_since(seq, 10).await.unwrap();
    assert_eq!(
        batch.changes,
        [Change::Revoked {
            id: "c.e1".into(),
            expires_at: NOW + TTL
        }]
    );
    assert!(
        store
            .revoked_ids(NOW)
            .await
            .unwrap()
            .contains(&("c.e1".to_owned(), NOW + TTL))
    );

    // Enabling gives a new epoch: the tokens refused at the disable stay refused.
    store
        .set_client_disabled(&name("ci"), false, "c.e2", 0)
        .await
        .unwrap();
    let enabled = store.client(&name("ci")).await.unwrap().unwrap();
    assert!(!enabled.disabled);
    assert_eq!(enabled.epoch, "c.e2");
    // Enabling an enabled client keeps its epoch.
    store
        .set_client_disabled(&name("ci"), false, "c.e3", 0)
        .await
        .unwrap();
    assert_eq!(
        store.client(&name("ci")).await.unwrap().unwrap().epoch,
        "c.e2"
    );

    let seq = store.change_seq().await.unwrap();
    store.remove_client(&name("ci"), NOW + TTL).await.unwrap();
    assert_eq!(store.client(&name("ci")).await.unwrap(), None);
    let batch = store.changes_since(seq, 10).await.unwrap();
    assert_eq!(
        batch.changes,
        [Change::Revoked {
            id: "c.e2".into(),
            expires_at: NOW + TTL
        }]
    );
}
