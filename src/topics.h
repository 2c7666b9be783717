/*-------------------------------------------------------------------------
 *
 * topics.h
 *	  Publish/subscribe (topics.c): what other subsystems call.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BROKER_TOPICS_H
#define BROKER_TOPICS_H

#include "postgres.h"

extern void BrokerTopicsForgetQueue(int32 queue_id);

#endif							/* BROKER_TOPICS_H */
