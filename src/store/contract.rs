//! The backend-neutral contract suite: the cases every [`Store`] backend must pass.
//!
//! A case is an async fn taking a freshly opened, empty store: as `&dyn Store`, as
//! `Arc<dyn Store>` where it spawns tasks, or as two handles on one state where it checks what
//! two gateways sharing a store must see. Cases use the traits only, so a failure is a broken
//! guarantee of the text on the traits, never a detail of one backend.
//!
//! A backend's tests implement [`Fixture`] for a fresh state (a file in a temporary directory, a
//! scratch database) and invoke [`contract_tests!`] with an expression that makes one; it expands
//! to one `#[tokio::test]` per case, named after the case. Tests of one backend's own machinery
//! (files, pragmas, migrations) stay beside that backend.

use std::sync::Arc;

use super::{
    LOGIN_ATTEMPT_TTL, LockoutPolicy, LoginAdmission, LoginVerdict, NewUser, RefreshRecord,
    RefreshState, RefreshSuccessor, RotateError, Store, StoreError,
};
use crate::auth::username::Username;

/// One fresh, empty state of a backend, alive as long as the value (dropping it may delete it).
pub(crate) trait Fixture {
    /// A new handle on this state, with a connection of its own, as another gateway sharing the
    /// store would hold.
    async fn open(&self) -> Arc<dyn Store>;
}

/// Expands to one `#[tokio::test]` per contract case; `$fixture` is evaluated afresh in each
/// test and must be a future of a [`Fixture`].
macro_rules! contract_tests {
    ($fixture:expr) => {
        $crate::store::contract::contract_tests!(@each $fixture, [tokio::test], borrowed:
            user_crud_round_trips,
            duplicate_user_is_a_conflict,
            changes_to_a_missing_user_are_not_found,
            rotation_marks_old_used_and_stores_successor_in_family,
            stolen_refresh_token_replay_revokes_the_family,
            expired_refresh_token_is_refused,
            unknown_refresh_token_is_refused,
            logged_out_family_cannot_refresh,
            failed_successor_insert_leaves_old_token_usable,
            duplicate_refresh_digest_is_refused,
            disabled_user_sessions_end_and_cannot_start,
            removed_user_tokens_are_gone_even_if_name_is_reused,
            revoke_user_refresh_ends_every_family,
            revoked_jtis_are_listed_until_expiry,
            purge_expired_deletes_only_expired_rows,
            abandoned_and_expired_reservations_give_their_place_back,
            a_late_success_does_not_lift_a_lockout_started_meanwhile,
            an_operator_unlock_ends_a_lockout_and_its_failures,
        );
        $crate::store::contract::contract_tests!(@each $fixture, [tokio::test], shared:
            usable_as_shared_trait_object,
        );
        $crate::store::contract::contract_tests!(@each $fixture,
            [tokio::test(flavor = "multi_thread", worker_threads = 4)], shared:
            concurrent_refresh_race_has_exactly_one_winner,
        );
        $crate::store::contract::contract_tests!(@each $fixture,
            [tokio::test(flavor = "multi_thread", worker_threads = 4)], two_handles:
            concurrent_refresh_race_across_processes_has_exactly_one_winner,
            concurrent_admissions_never_exceed_the_failure_budget,
        );
    };
    (@each $fixture:expr, [$attr:meta], $how:ident: $($case:ident),+ $(,)?) => {
        $($crate::store::contract::contract_tests!(@one $fixture, [$attr], $how, $case);)+
    };
    (@one $fixture:expr, [$attr:meta], borrowed, $case:ident) => {
        #[$attr]
        async fn $case() {
            let fixture = $fixture.await;
            let store = $crate::store::contract::Fixture::open(&fixture).await;
            $crate::store::contract::$case(&*store).await;
        }
    };
    (@one $fixture:expr, [$attr:meta], shared, $case:ident) => {
        #[$attr]
        async fn $case() {
            let fixture = $fixture.await;
            let store = $crate::store::contract::Fixture::open(&fixture).await;
            $crate::store::contract::$case(store).await;
        }
    };
    (@one $fixture:expr, [$attr:meta], two_handles, $case:ident) => {
        #[$attr]
        async fn $case() {
            let fixture = $fixture.await;
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
    find_time: 600,
    ban_time: 900,
};

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
    store.insert_refresh(token(1, "f1", "alice")).await.unwrap();
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
    store.set_disabled(&alice, true).await.unwrap();
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
    store.set_disabled(&alice, false).await.unwrap();
    assert!(!store.user(&alice).await.unwrap().unwrap().disabled);

    store.remove_user(&alice).await.unwrap();
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

pub(crate) async fn changes_to_a_missing_user_are_not_found(store: &dyn Store) {
    let ghost = name("ghost");
    let is_not_found = |r: Result<(), StoreError>| matches!(r, Err(StoreError::NotFound(n)) if n.as_str() == "ghost");
    assert!(is_not_found(store.set_password(&ghost, "h").await));
    assert!(is_not_found(store.set_disabled(&ghost, true).await));
    assert!(is_not_found(
        store.set_roles_scopes(&ghost, vec![], vec![]).await
    ));
    assert!(is_not_found(store.remove_user(&ghost).await));
    assert!(is_not_found(
        store.insert_refresh(token(1, "f", "ghost")).await
    ));
    assert_eq!(store.user(&ghost).await.unwrap(), None);
}

pub(crate) async fn rotation_marks_old_used_and_stores_successor_in_family(store: &dyn Store) {
    with_alice_token(store).await;
    let old = store
        .rotate_refresh(&digest(1), successor(2), NOW + 10)
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
        .rotate_refresh(&digest(2), successor(3), NOW + 20)
        .await
        .unwrap();
}

pub(crate) async fn stolen_refresh_token_replay_revokes_the_family(store: &dyn Store) {
    with_alice_token(store).await;
    store
        .insert_refresh(token(9, "other", "alice"))
        .await
        .unwrap();
    store
        .rotate_refresh(&digest(1), successor(2), NOW + 10)
        .await
        .unwrap();

    // The thief replays the old token: refused, and the family is revoked.
    let err = store
        .rotate_refresh(&digest(1), successor(3), NOW + 20)
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
        .rotate_refresh(&digest(2), successor(4), NOW + 30)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Revoked), "{err}");
    let (_, state) = store.refresh(&digest(2)).await.unwrap().unwrap();
    assert!(state.revoked_at.is_some());

    // Another family of the same user is untouched.
    store
        .rotate_refresh(&digest(9), successor(5), NOW + 30)
        .await
        .unwrap();
}

pub(crate) async fn expired_refresh_token_is_refused(store: &dyn Store) {
    with_alice_token(store).await;
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW + TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Expired), "{err}");
    // Nothing changed: the token is not marked used and no successor exists.
    let (_, state) = store.refresh(&digest(1)).await.unwrap().unwrap();
    assert_eq!(state, RefreshState::default());
    assert_eq!(store.refresh(&digest(2)).await.unwrap(), None);
    // One second earlier it is still valid.
    store
        .rotate_refresh(&digest(1), successor(2), NOW + TTL - 1)
        .await
        .unwrap();
}

pub(crate) async fn unknown_refresh_token_is_refused(store: &dyn Store) {
    with_alice_token(store).await;
    let err = store
        .rotate_refresh(&digest(7), successor(2), NOW)
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
        .rotate_refresh(&digest(1), successor(2), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Revoked), "{err}");
}

pub(crate) async fn failed_successor_insert_leaves_old_token_usable(store: &dyn Store) {
    with_alice_token(store).await;
    store.insert_refresh(token(2, "f2", "alice")).await.unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW)
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
        .rotate_refresh(&digest(1), successor(3), NOW)
        .await
        .unwrap();
}

pub(crate) async fn duplicate_refresh_digest_is_refused(store: &dyn Store) {
    with_alice_token(store).await;
    let err = store
        .insert_refresh(token(1, "f9", "alice"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateRefresh), "{err}");
    let (record, _) = store.refresh(&digest(1)).await.unwrap().unwrap();
    assert_eq!(record.family, "f1");
}

pub(crate) async fn disabled_user_sessions_end_and_cannot_start(store: &dyn Store) {
    with_alice_token(store).await;
    let alice = name("alice");
    store.set_disabled(&alice, true).await.unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Revoked), "{err}");
    let err = store
        .insert_refresh(token(3, "f3", "alice"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Disabled(_)), "{err}");

    // Re-enabling does not resurrect the old family.
    store.set_disabled(&alice, false).await.unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Revoked), "{err}");
    store.insert_refresh(token(3, "f3", "alice")).await.unwrap();
}

pub(crate) async fn removed_user_tokens_are_gone_even_if_name_is_reused(store: &dyn Store) {
    with_alice_token(store).await;
    let alice = name("alice");
    store.remove_user(&alice).await.unwrap();
    assert_eq!(store.refresh(&digest(1)).await.unwrap(), None);
    store.create_user(new_user("alice")).await.unwrap();
    let err = store
        .rotate_refresh(&digest(1), successor(2), NOW)
        .await
        .unwrap_err();
    assert!(matches!(err, RotateError::Unknown), "{err}");
}

pub(crate) async fn revoke_user_refresh_ends_every_family(store: &dyn Store) {
    with_alice_token(store).await;
    store.insert_refresh(token(2, "f2", "alice")).await.unwrap();
    store.create_user(new_user("bob")).await.unwrap();
    store.insert_refresh(token(3, "f3", "bob")).await.unwrap();
    store.revoke_user_refresh(&name("alice")).await.unwrap();
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
                    .rotate_refresh(&digest(1), successor(100 + i), NOW)
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
                    .rotate_refresh(&digest(1), successor(100 + i), NOW)
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

pub(crate) async fn revoked_jtis_are_listed_until_expiry(store: &dyn Store) {
    store.revoke_jti("a", NOW + 100).await.unwrap();
    store.revoke_jti("b", NOW + 200).await.unwrap();
    // Revoking again never shortens the denylisting.
    store.revoke_jti("b", NOW + 50).await.unwrap();

    let owned = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(j, e)| ((*j).to_owned(), *e)).collect()
    };
    assert_eq!(
        store.revoked_jtis(NOW).await.unwrap(),
        owned(&[("a", NOW + 100), ("b", NOW + 200)])
    );
    assert_eq!(
        store.revoked_jtis(NOW + 100).await.unwrap(),
        owned(&[("b", NOW + 200)])
    );
    // Asked about an earlier time, the store would still list "a" had it only been filtered.
    assert_eq!(
        store.revoked_jtis(NOW).await.unwrap(),
        owned(&[("b", NOW + 200)]),
        "expired ids are purged on the way"
    );
    assert!(store.revoked_jtis(NOW + 200).await.unwrap().is_empty());
}

pub(crate) async fn purge_expired_deletes_only_expired_rows(store: &dyn Store) {
    with_alice_token(store).await;
    let mut long = token(2, "f2", "alice");
    long.expires_at = NOW + 10 * TTL;
    store.insert_refresh(long).await.unwrap();
    store.revoke_jti("a", NOW + TTL).await.unwrap();
    store.revoke_jti("b", NOW + 10 * TTL).await.unwrap();
    assert_eq!(store.purge_expired(NOW).await.unwrap(), 0);
    assert_eq!(store.purge_expired(NOW + TTL).await.unwrap(), 2);
    assert_eq!(store.refresh(&digest(1)).await.unwrap(), None);
    assert!(store.refresh(&digest(2)).await.unwrap().is_some());
    assert_eq!(store.revoked_jtis(NOW).await.unwrap().len(), 1);
}

/// Two handles on one state (for SQLite, two connections to one file), as two gateways sharing
/// it would have, admitting 40 attempts from threads at once: the budget holds across handles.
pub(crate) async fn concurrent_admissions_never_exceed_the_failure_budget(
    stores: [Arc<dyn Store>; 2],
) {
    let admits = (0..40).map(|i| {
        let store = stores[i % 2].clone();
        tokio::spawn(async move { store.admit_login(&name("alice"), NOW, POLICY).await })
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
            .finish_login(&name("alice"), *id, NOW, POLICY, LoginVerdict::Failed)
            .await
            .unwrap();
        assert_eq!(until, (i == 4).then_some(NOW + POLICY.ban_time));
        if i < 4 {
            assert_eq!(
                store
                    .admit_login(&name("alice"), NOW, POLICY)
                    .await
                    .unwrap(),
                LoginAdmission::Exhausted
            );
        }
    }
    assert_eq!(
        store
            .admit_login(&name("alice"), NOW, POLICY)
            .await
            .unwrap(),
        LoginAdmission::Locked(NOW + POLICY.ban_time)
    );
}

pub(crate) async fn abandoned_and_expired_reservations_give_their_place_back(store: &dyn Store) {
    let alice = name("alice");
    let policy = LockoutPolicy {
        max_failures: 1,
        ..POLICY
    };
    let LoginAdmission::Admitted(id) = store.admit_login(&alice, NOW, policy).await.unwrap() else {
        panic!("first attempt refused");
    };
    assert_eq!(
        store.admit_login(&alice, NOW, policy).await.unwrap(),
        LoginAdmission::Exhausted
    );
    store
        .finish_login(&alice, id, NOW, policy, LoginVerdict::Abandoned)
        .await
        .unwrap();
    // A reservation never finished (the process died) stops counting after its TTL.
    assert!(matches!(
        store.admit_login(&alice, NOW, policy).await.unwrap(),
        LoginAdmission::Admitted(_)
    ));
    assert_eq!(
        store
            .admit_login(&alice, NOW + LOGIN_ATTEMPT_TTL - 1, policy)
            .await
            .unwrap(),
        LoginAdmission::Exhausted
    );
    assert!(matches!(
        store
            .admit_login(&alice, NOW + LOGIN_ATTEMPT_TTL, policy)
            .await
            .unwrap(),
        LoginAdmission::Admitted(_)
    ));
    // Other names are not affected.
    assert!(matches!(
        store.admit_login(&name("bob"), NOW, policy).await.unwrap(),
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
            match store.admit_login(alice, now, policy).await.unwrap() {
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
            .finish_login(&alice, id, later, policy, LoginVerdict::Failed)
            .await
            .unwrap();
    }
    store
        .finish_login(&alice, right, later, policy, LoginVerdict::Succeeded)
        .await
        .unwrap();
    assert_eq!(
        store.admit_login(&alice, later, policy).await.unwrap(),
        LoginAdmission::Locked(later + policy.ban_time)
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
    assert_eq!(store.lockout(&alice, NOW).await.unwrap(), None);
    assert!(!store.unlock(&alice, NOW).await.unwrap());
    let fail = |now: i64| {
        let (store, alice) = (&store, &alice);
        async move {
            let LoginAdmission::Admitted(id) = store.admit_login(alice, now, policy).await.unwrap()
            else {
                panic!("not admitted");
            };
            store
                .finish_login(alice, id, now, policy, LoginVerdict::Failed)
                .await
                .unwrap()
        }
    };
    fail(NOW).await;
    let until = fail(NOW).await.unwrap();
    assert_eq!(store.lockout(&alice, NOW).await.unwrap(), Some(until));
    assert_eq!(store.lockout(&alice, until).await.unwrap(), None);
    assert_eq!(store.lockout(&name("bob"), NOW).await.unwrap(), None);

    assert!(store.unlock(&alice, NOW).await.unwrap());
    assert_eq!(store.lockout(&alice, NOW).await.unwrap(), None);
    assert!(matches!(
        store.admit_login(&alice, NOW, policy).await.unwrap(),
        LoginAdmission::Admitted(_)
    ));
    // The failures went with the lock: one more wrong password does not lock again.
    assert_eq!(fail(NOW).await, None);
}

pub(crate) async fn usable_as_shared_trait_object(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(store.list_users().await.unwrap().is_empty());
}
